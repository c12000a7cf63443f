"""Freeze policies on tiny real models: trainable counts, the head, BatchNorm running statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import InvalidArgument
from common.manifest import FreezeSpec
from common.models.freeze import apply_freeze, train_mode
from common.models.zoo import build_model, get_spec


def _model(key: str = "test_resnet") -> nn.Module:
    torch.manual_seed(0)
    return build_model(key, 2)


def _count(model: nn.Module, prefixes: list[str] | tuple[str, ...]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if any(n == q or n.startswith(q + ".") for q in prefixes))


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


POLICIES = [
    FreezeSpec(mode="frozen"),
    FreezeSpec(mode="partial"),
    FreezeSpec(mode="unfrozen"),
    FreezeSpec(),
    FreezeSpec(fraction=0.0),
    FreezeSpec(fraction=0.5),
    FreezeSpec(fraction=1.0),
    FreezeSpec(prefixes=["conv1", "layer1"]),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe())
def test_the_head_always_trains(policy: FreezeSpec) -> None:
    model = _model()
    report = apply_freeze(model, get_spec("test_resnet"), policy)
    assert {"fc.weight", "fc.bias"} <= _trainable_names(model)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_counts_per_policy() -> None:
    model = _model()
    spec = get_spec("test_resnet")
    groups = spec.layer_groups(model)
    total = sum(p.numel() for p in model.parameters())
    head = _count(model, spec.head_prefixes)
    assert len(groups) == 10

    frozen = apply_freeze(model, spec, FreezeSpec(mode="frozen"))
    assert frozen.trainable == head and frozen.frozen_prefixes == tuple(groups)

    partial = apply_freeze(model, spec, FreezeSpec(mode="partial"))
    assert partial.frozen_prefixes == tuple(groups[:3])  # 10 // 3
    assert partial.trainable == total - _count(model, groups[:3])

    assert apply_freeze(model, spec, FreezeSpec(mode="unfrozen")).trainable == total
    assert apply_freeze(model, spec, FreezeSpec()).trainable == total

    half = apply_freeze(model, spec, FreezeSpec(fraction=0.5))
    assert half.frozen_prefixes == tuple(groups[:5])
    assert half.trainable == total - _count(model, groups[:5])
    assert apply_freeze(model, spec, FreezeSpec(fraction=1.0)).trainable == head
    assert apply_freeze(model, spec, FreezeSpec(fraction=0.0)).trainable == total

    explicit = apply_freeze(model, spec, FreezeSpec(prefixes=["layer1", "layer2.0.conv1"]))
    assert explicit.trainable == total - _count(model, ["layer1", "layer2.0.conv1"])
    assert "layer2.0.bn1.weight" in _trainable_names(model)
    assert not {n for n in _trainable_names(model) if n.startswith("layer1.")}


def test_mode_wins_over_fraction_and_apply_is_idempotent() -> None:
    model = _model()
    spec = get_spec("test_resnet")
    apply_freeze(model, spec, FreezeSpec(mode="frozen"))
    report = apply_freeze(model, spec, FreezeSpec(mode="unfrozen", fraction=1.0, prefixes=["layer1"]))
    assert report.trainable == report.total and report.frozen_prefixes == ()


def test_partial_rounds_down_and_small_models() -> None:
    luna = _model("luna")
    spec = get_spec("luna")
    assert spec.layer_groups(luna) == ["tail_batchnorm", "block1", "block2", "block3", "block4"]
    report = apply_freeze(luna, spec, FreezeSpec(mode="partial"))
    assert report.frozen_prefixes == ("tail_batchnorm",)
    assert report.frozen_norms == ("tail_batchnorm",)


def test_vit_root_parameters_follow_the_first_group() -> None:
    model = _model("test_vit")
    spec = get_spec("test_vit")
    apply_freeze(model, spec, FreezeSpec(mode="partial"))
    trainable = _trainable_names(model)
    assert "cls_token" not in trainable and "pos_embed" not in trainable
    assert "patch_embed.proj.weight" not in trainable and "blocks.5.attn.qkv.weight" in trainable
    apply_freeze(model, spec, FreezeSpec(prefixes=["blocks.0"]))
    assert {"cls_token", "pos_embed"} <= _trainable_names(model)
    frozen = apply_freeze(model, spec, FreezeSpec(mode="frozen"))
    assert _trainable_names(model) == {"head.weight", "head.bias"}
    assert frozen.trainable == _count(model, ["head"])


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (FreezeSpec(mode="mostly"), "unknown freeze mode"),
        (FreezeSpec(fraction=1.5), r"within \[0, 1\]"),
        (FreezeSpec(fraction=float("nan")), r"within \[0, 1\]"),
        (FreezeSpec(prefixes=["no_such_layer"]), "layer groups: conv1.0, conv1.1"),
        (FreezeSpec(prefixes=["fc"]), "outside the head"),
        (FreezeSpec(prefixes=["layer"]), "matches no parameter"),  # prefixes end at module boundaries
    ],
)
def test_bad_policies_are_invalid_arguments(policy: FreezeSpec, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        apply_freeze(_model(), get_spec("test_resnet"), policy)


def _train_step(model: nn.Module, size: int = 64) -> None:
    """Forward, backward and a plain SGD update of the trainable parameters."""
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, size, size) * 2 + 1), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= 1e-3 * param.grad


def test_frozen_batchnorm_keeps_its_running_stats_during_training() -> None:
    model = _model()
    spec = get_spec("test_resnet")
    report = apply_freeze(model, spec, FreezeSpec(mode="partial"))  # conv1.0, conv1.1, conv1.3 frozen
    assert "conv1.1" in report.frozen_norms and "layer4.0.bn1" not in report.frozen_norms
    frozen_bn = model.get_submodule("conv1.1")
    live_bn = model.get_submodule("layer4.0.bn1")
    frozen_before = frozen_bn.running_mean.clone()
    frozen_weight = frozen_bn.weight.detach().clone()
    live_before = live_bn.running_mean.clone()

    train_mode(model, report)
    assert model.training and live_bn.training and not frozen_bn.training
    _train_step(model)

    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert torch.equal(frozen_bn.weight.detach(), frozen_weight)
    assert not torch.equal(live_bn.running_mean, live_before)


def test_plain_train_would_move_frozen_running_stats() -> None:
    """Why train_mode exists: requires_grad=False alone does not stop BatchNorm's statistics."""
    model = _model()
    apply_freeze(model, get_spec("test_resnet"), FreezeSpec(mode="frozen"))
    bn = model.get_submodule("conv1.1")
    before = bn.running_mean.clone()
    model.train()
    _train_step(model)
    assert not torch.equal(bn.running_mean, before)


def test_frozen_mode_keeps_every_batchnorm_in_eval() -> None:
    model = _model("test_efficientnet")
    report = apply_freeze(model, get_spec("test_efficientnet"), FreezeSpec(mode="frozen"))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert set(report.frozen_norms) == set(norms) and norms
    train_mode(model, report)
    assert model.training and not any(model.get_submodule(n).training for n in norms)
    unfrozen = apply_freeze(model, get_spec("test_efficientnet"), FreezeSpec(mode="unfrozen"))
    assert unfrozen.frozen_norms == ()
    train_mode(model, unfrozen)
    assert all(model.get_submodule(n).training for n in norms)
