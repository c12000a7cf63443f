"""Adam with per-group learning rates, and the learning-rate schedule (constant or warm-up + cosine).

Parameter groups: the new head trains at ``head_lr``; every other trainable parameter at ``lr``,
unless a ``group_lr`` key (a module-name prefix such as a layer group ``layer4.1`` or a whole stage
``layer4``) covers it — the longest matching prefix wins. Frozen parameters are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from common.errors import InvalidArgument
from common.models.zoo import ArchSpec, build_model, get_spec
from services.trainer.spec import JobConfig, RecipeConfig


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_group_lr(names: Iterable[str], arch: ArchSpec, group_lr: dict[str, float], groups: list[str]) -> None:
    """Every group_lr key must cover at least one parameter outside the head."""
    names = list(names)
    for prefix in group_lr:
        if any(_under(prefix, h) or _under(h, prefix) for h in arch.head_prefixes):
            raise InvalidArgument(f"recipe.group_lr[{prefix!r}] covers the head; use recipe.head_lr for the head")
        if not any(_under(n, prefix) for n in names):
            raise InvalidArgument(
                f"recipe.group_lr[{prefix!r}] matches no parameter of {arch.key}; layer groups: {', '.join(groups)}"
            )


def validate_group_lr(config: JobConfig, num_classes: int = 2) -> None:
    """Submit-time check of ``recipe.group_lr`` against the architecture, built without memory (meta device)."""
    if not config.recipe.group_lr:
        return
    arch = get_spec(config.architecture)
    with torch.device("meta"):
        model = build_model(arch.key, num_classes, pretrained=False, image_size=config.recipe.image_size)
    names = [n for n, _ in model.named_parameters()]
    check_group_lr(names, arch, config.recipe.group_lr, arch.layer_groups(model))


def param_groups(model: nn.Module, arch: ArchSpec, recipe: RecipeConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups, each with a ``name`` and its ``base_lr`` (what the schedule scales)."""
    named = list(model.named_parameters())
    check_group_lr((n for n, _ in named), arch, recipe.group_lr, arch.layer_groups(model))
    by_prefix = sorted(recipe.group_lr, key=len, reverse=True)
    buckets: dict[str, tuple[float, list[nn.Parameter]]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        if any(_under(name, h) for h in arch.head_prefixes):
            key, lr = "head", recipe.head_lr
        else:
            prefix = next((p for p in by_prefix if _under(name, p)), None)
            key, lr = (f"group:{prefix}", recipe.group_lr[prefix]) if prefix else ("backbone", recipe.lr)
        buckets.setdefault(key, (lr, []))[1].append(param)
    if not buckets:
        raise InvalidArgument("the freeze policy leaves no trainable parameter")
    return [
        {"params": params, "lr": lr, "base_lr": lr, "name": key, "weight_decay": recipe.weight_decay}
        for key, (lr, params) in buckets.items()
    ]


def build_optimizer(model: nn.Module, arch: ArchSpec, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """Adam (the thesis's optimiser) over the trainable parameters, grouped by learning rate."""
    return torch.optim.Adam(param_groups(model, arch, recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)


class LrSchedule:
    """Sets every group's lr from its ``base_lr`` once per optimizer step.

    ``constant``: base lr (after the optional warm-up). ``cosine``: cosine decay from the base lr
    towards zero over the steps after the warm-up. Warm-up (either schedule) rises linearly over
    ``warmup_steps``. The only state is the step counter, so resuming is exact.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, min(warmup_steps, self.total_steps))
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base lr for the optimizer step with 0-based index ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def _apply(self) -> None:
        factor = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        """The current lr of the first group (the head when it trains)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self._apply()
