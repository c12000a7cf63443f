"""Freeze policies: which parameters train during fine-tuning.

`apply_freeze` sets `requires_grad` from a `FreezeSpec` and returns a `FreezeReport`. Frozen
BatchNorm layers must also keep their running statistics, which `model.train()` would update: the
training loop calls `train_mode(model, report)` instead of `model.train()` (it puts the model in
training mode, then the frozen BatchNorm layers back in eval mode). Only BatchNorm is switched;
dropout in frozen parts keeps its training behaviour.

Policies, over the spec's ordered layer groups (input to output, head excluded):

- ``frozen``: every parameter outside the head is frozen.
- ``partial``: the first third of the groups (rounded down) is frozen, the thesis's choice.
- ``unfrozen`` (also an empty FreezeSpec): everything trains.
- ``fraction``: the first ``floor(fraction * groups)`` groups are frozen, fraction in [0, 1].
- ``prefixes``: parameters under the given module-name prefixes are frozen.

Parameters in no layer group (ViT's ``cls_token`` / ``pos_embed``, held by the root module) are
frozen when the first group is. The head (`ArchSpec.head_prefixes`) is never frozen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from common.errors import InvalidArgument
from common.manifest import FreezeSpec
from common.models.zoo import ArchSpec

MODES = ("frozen", "partial", "unfrozen")


@dataclass(frozen=True)
class FreezeReport:
    """What `apply_freeze` did.

    Attributes:
        trainable: number of trainable parameter elements.
        total: number of parameter elements.
        frozen_prefixes: the frozen layer groups (or the requested prefixes), input to output.
        frozen_norms: names of BatchNorm modules to keep in eval mode while training.
    """

    trainable: int
    total: int
    frozen_prefixes: tuple[str, ...]
    frozen_norms: tuple[str, ...] = ()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _under_any(name: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(_under(name, p) for p in prefixes)


def _frozen_group_count(policy: FreezeSpec, n_groups: int) -> int | None:
    """How many leading groups to freeze; None when the policy names prefixes instead."""
    if policy.mode:
        if policy.mode == "frozen":
            return n_groups
        if policy.mode == "partial":
            return n_groups // 3
        if policy.mode == "unfrozen":
            return 0
        raise InvalidArgument(f"unknown freeze mode {policy.mode!r}; valid: {', '.join(MODES)}")
    if policy.fraction is not None:
        if not (math.isfinite(policy.fraction) and 0.0 <= policy.fraction <= 1.0):
            raise InvalidArgument(f"freeze fraction must be within [0, 1], got {policy.fraction}")
        return math.floor(policy.fraction * n_groups + 1e-9)
    if policy.prefixes:
        return None
    return 0


def apply_freeze(model: nn.Module, spec: ArchSpec, policy: FreezeSpec) -> FreezeReport:
    """Set `requires_grad` on every parameter of `model` according to `policy`.

    Idempotent: every parameter is first made trainable. Raises InvalidArgument for an unknown
    mode, a fraction outside [0, 1], or a prefix that matches no parameter outside the head (the
    message lists the layer groups).
    """
    groups = spec.layer_groups(model)
    heads = spec.head_prefixes
    params = list(model.named_parameters())
    for _, param in params:
        param.requires_grad_(True)

    count = _frozen_group_count(policy, len(groups))
    if count is None:
        frozen_prefixes = tuple(p.strip() for p in policy.prefixes or [] if p.strip())
        for prefix in frozen_prefixes:
            if not any(_under(n, prefix) and not _under_any(n, heads) for n, _ in params):
                raise InvalidArgument(
                    f"freeze prefix {prefix!r} matches no parameter outside the head; layer groups: {', '.join(groups)}"
                )
        freeze_loose = False
    else:
        frozen_prefixes = tuple(groups[:count])
        freeze_loose = count > 0  # root-held parameters go with the first group

    def is_frozen(name: str) -> bool:
        if _under_any(name, heads):
            return False
        if _under_any(name, frozen_prefixes):
            return True
        return freeze_loose and not _under_any(name, groups)

    for name, param in params:
        if is_frozen(name):
            param.requires_grad_(False)

    norms = tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats and _norm_is_frozen(name, module, is_frozen)
    )
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    total = sum(p.numel() for _, p in params)
    return FreezeReport(trainable=trainable, total=total, frozen_prefixes=frozen_prefixes, frozen_norms=norms)


def _norm_is_frozen(name: str, module: nn.Module, is_frozen: Callable[[str], bool]) -> bool:
    """A BatchNorm is frozen when its affine parameters are, or (without them) when its place is."""
    own = list(module.parameters(recurse=False))
    if own:
        return all(not p.requires_grad for p in own)
    return is_frozen(name + ".running_mean")


def train_mode(model: nn.Module, report: FreezeReport) -> nn.Module:
    """`model.train()`, but frozen BatchNorm layers stay in eval mode (running stats untouched).

    Call it wherever the training loop would call `model.train()`, e.g. after each validation pass.
    """
    model.train()
    for name in report.frozen_norms:
        model.get_submodule(name).eval()
    return model
