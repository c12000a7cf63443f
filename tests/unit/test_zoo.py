"""The model zoo: thesis layer names exist, heads are found and start small, tiny models build fast."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from common.errors import InvalidArgument
from common.models.luna import Luna
from common.models.zoo import ZOO, build_model, get_spec, transformer_blocks

TINY = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "test_swin", "luna"]
BIG = ["alexnet", "resnet18", "efficientnetv2_s", "convnext_tiny", "vit_b16", "swin_t", "dino_vits16"]

# The thesis's explanation layers (docs/design.md) in the names of the chosen implementations.
THESIS = {
    "luna": ("gradcam", "block4.maxpool", 0.4),
    "alexnet": ("gradcam", "features.11", 0.5),
    "resnet18": ("gradcam", "layer4.0.downsample.0", 0.4),
    "efficientnetv2_s": ("gradcam", "features.6.0.block.0", 0.4),
    "convnext_tiny": ("gradcam", "features.5.7.block.6", 0.4),
    "vit_b16": ("attention", "blocks.5", 0.4),  # encoder block 6 (1-based)
    "swin_t": ("attention", "layers.2.blocks.1", 0.4),  # stage 3, block 2 (1-based)
    "dino_vits16": ("attention", "blocks.11", 0.4),  # last block
}


def _meta_build(key: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(key, 2)


def _check_names(key: str, model: nn.Module, num_classes: int = 2) -> None:
    spec = get_spec(key)
    modules = dict(model.named_modules())
    assert spec.explanation.layer in modules, spec.explanation.layer
    for head in spec.head_prefixes:
        assert isinstance(modules[head], nn.Linear), head
        assert modules[head].out_features == num_classes
    groups = spec.layer_groups(model)
    assert len(groups) >= 3
    assert all(g in modules or g in dict(model.named_parameters()) for g in groups)
    assert not any(g == h or g.startswith(h + ".") for g in groups for h in spec.head_prefixes)
    cams = spec.cam_layers(model)
    assert spec.explanation.layer in cams and all(c in modules for c in cams)
    order = list(modules)
    assert [order.index(c) for c in cams] == sorted(order.index(c) for c in cams)  # input to output
    if spec.attention is not None:
        assert spec.explanation.method == "attention"
        assert hasattr(modules[spec.explanation.layer], "attn"), spec.explanation.layer  # a transformer block
        assert cams == transformer_blocks(model, spec.attention)
    if spec.timm_name is not None and hasattr(model, "get_classifier"):
        assert modules[spec.head_prefixes[0]] is model.get_classifier()


@pytest.mark.parametrize("key", list(ZOO))
def test_spec_names_exist_and_the_explanation_layer_yields_a_map(key: str) -> None:
    """On the meta device (shapes only, nothing allocated), so even ViT-B takes a fraction of a second."""
    spec = get_spec(key)
    model = _meta_build(key).eval()
    _check_names(key, model)
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(spec.explanation.layer).register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        out = model(torch.empty(1, 3, spec.input_size, spec.input_size, device="meta"))
    handle.remove()
    assert out.shape == (1, 2)
    assert len(seen) == 1
    if spec.attention is None:  # a Grad-CAM layer: an NCHW map with some resolution left
        assert seen[0].ndim == 4 and seen[0].shape[-1] >= 4, seen[0].shape


@pytest.mark.parametrize("key", list(THESIS))
def test_thesis_explanation_defaults(key: str) -> None:
    spec = get_spec(key)
    assert (spec.explanation.method, spec.explanation.layer, spec.explanation.threshold) == THESIS[key]
    assert spec.explanation.normalization == "max"


def test_cam_candidates_end_with_the_deepest_layer() -> None:
    assert get_spec("resnet18").cam_layers(_meta_build("resnet18"))[-1] == "layer4.1"
    assert get_spec("luna").cam_layers(build_model("luna", 2))[-1] == "block4.maxpool"
    assert get_spec("swin_t").cam_layers(_meta_build("swin_t"))[-1] == "layers.3.blocks.1"


def test_attention_kinds_and_input_sizes() -> None:
    kinds = {k: s.attention for k, s in ZOO.items() if s.attention}
    assert kinds == {
        "vit_b16": "vit",
        "swin_t": "swin",
        "dino_vits16": "vit",
        "test_vit": "vit",
        "test_swin": "swin",
    }
    assert get_spec("luna").input_size == 300
    assert all(ZOO[k].input_size == 224 for k in [*BIG, "efficientnet_lite0"])
    assert get_spec("luna").timm_name is None and get_spec("alexnet").timm_name is None
    assert get_spec("efficientnet_lite0").timm_name == "tf_efficientnet_lite0"


@pytest.mark.parametrize("key", TINY)
def test_tiny_models_build_fast_and_forward(key: str) -> None:
    spec = get_spec(key)
    start = time.perf_counter()
    model = build_model(key, 3)
    assert time.perf_counter() - start < 1.0
    _check_names(key, model, num_classes=3)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, 3)


@pytest.mark.parametrize("key", TINY)
def test_new_head_starts_small(key: str) -> None:
    """Weights ~N(0, 0.01), bias 0, so the first logits are near zero (lr 2e-5 cannot undo big ones)."""
    torch.manual_seed(0)
    spec = get_spec(key)
    model = build_model(key, 2).eval()
    head = model.get_submodule(spec.head_prefixes[0])
    assert 0.005 < float(head.weight.detach().std()) < 0.015
    assert torch.count_nonzero(head.bias) == 0
    with torch.no_grad():
        logits = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert float(logits.abs().max()) < 1.0


def test_luna_matches_the_thesis() -> None:
    model = build_model("luna", 2)
    assert isinstance(model, Luna)
    assert sum(p.numel() for p in model.parameters()) == 115_088  # "about 115K at 300 px"
    assert isinstance(model.get_submodule("block4.maxpool"), nn.MaxPool2d)
    assert isinstance(model.get_submodule("tail_batchnorm"), nn.BatchNorm2d)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    small = build_model("luna", 2, image_size=64).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(InvalidArgument):
        build_model("luna", 2, image_size=8)
    with pytest.raises(InvalidArgument, match="no pretrained"):
        build_model("luna", 2, pretrained=True)


def test_attention_models_take_another_image_size() -> None:
    model = build_model("test_vit", 2, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_unknown_architecture_lists_the_zoo() -> None:
    with pytest.raises(InvalidArgument) as err:
        get_spec("no_such_net")
    assert "luna" in err.value.message and "vit_b16" in err.value.message
    assert "any timm model name" in err.value.message
    with pytest.raises(InvalidArgument):
        build_model("resnet18", 1)


def test_any_timm_name_gets_a_generic_spec() -> None:
    spec = get_spec("mobilenetv3_small_050")
    assert spec.timm_name == "mobilenetv3_small_050" and spec.attention is None
    assert spec.head_prefixes == ("classifier",)
    model = build_model("mobilenetv3_small_050", 2)
    modules = dict(model.named_modules())
    assert spec.explanation.layer in modules and spec.explanation.method == "gradcam"
    assert spec.layer_groups(model)[0] == "conv_stem"
    assert float(model.get_submodule("classifier").weight.detach().std()) < 0.015

    vit = get_spec("deit_tiny_patch16_224")
    assert vit.attention == "vit" and vit.head_prefixes == ("head",)
    assert vit.explanation.layer == "blocks.11"
    assert get_spec("deit_tiny_patch16_224") is vit  # cached
