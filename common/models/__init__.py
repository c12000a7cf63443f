"""Networks: the zoo of architectures, Luna, freeze policies and initial weights."""
