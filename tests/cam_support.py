"""The plain-autograd reference the CAM tests compare the explainer's maps against."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def reference_activation_and_gradient(model: nn.Module, x: Tensor, layer: str, target: list[int]) -> tuple[Tensor, Tensor]:
    """Activation and gradient of ``layer`` (float64) by a plain ``.backward()`` on a copy without in-place ReLUs."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    store: dict[str, Tensor] = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(x.clone())
    handle.remove()
    store["a"].retain_grad()
    logits[torch.arange(len(target)), torch.tensor(target)].sum().backward()
    return store["a"].detach().double(), store["a"].grad.double()
