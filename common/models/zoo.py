"""The model zoo: one explicit `ArchSpec` per architecture, plus any timm model name.

Each spec says how to build the network with a new classification head, which modules form that
head, the ordered layer groups used by the freeze policies, the input size, and the thesis's
explanation defaults translated to the module names of the chosen implementation.

Implementation choices (thesis facts: docs/design.md):

- torchvision for AlexNet, EfficientNetV2-S and ConvNeXt-T: their thesis layers are torchvision module
  names, timm has no AlexNet and no ImageNet weights for the plain `efficientnetv2_s`, and timm's
  ConvNeXt block runs its MLP channels-last, so the thesis layer has no NCHW twin there.
- timm for ResNet18 (`resnet18.tv_in1k`: torchvision's weights, the same module names), ViT-B/16,
  Swin-T, DINO ViT-S/16 and EfficientNet-Lite0; their folders can also be loaded with timm's local-dir.
- Thesis block numbers in words ("ViT encoder block 6", "Swin stage 3 block 2") are read 1-based:
  Swin's stage 3 of 4 has 6 blocks but stage 4 only 2, so a 0-based "stage 3 block 2" would not exist.

Layer groups are module-name prefixes from input to output, without the head. They are derived from
the built model: top-level children holding parameters, descending into plain `nn.Sequential` /
`nn.ModuleList` containers, into the spec's `expand_types`, and into any module that contains the
head, so a group is one stem module, one residual block or one final norm. Parameters held directly
by the root (ViT's `cls_token`, `pos_embed`) belong to no group; the freeze policies treat them with
the first group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torchvision
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from common.errors import InvalidArgument
from common.manifest import ExplanationDefaults
from common.models.luna import LUNA_INPUT_SIZE, Luna

#: (num_classes, pretrained, image_size or None for the architecture's default) -> model with a new head.
Builder = Callable[[int, bool, int | None], nn.Module]

DEFAULT_INPUT_SIZE = 224
HEAD_INIT_STD = 0.01


@dataclass(frozen=True, eq=False)
class ArchSpec:
    """Everything the services need to know about one architecture.

    Attributes:
        key: zoo key or timm model name.
        build: (num_classes, pretrained, image_size) -> model. Use `build_model`, which also
            initialises the new head; `build` alone leaves the library's head init.
        head_prefixes: module names of the new classification head (never frozen).
        input_size: square input side the architecture is trained at.
        explanation: thesis defaults (copy before changing: `spec.explanation.model_copy()`);
            `layer` is a module name in the built model. For attention architectures `method` is
            "attention" and `layer` names a transformer block (``blocks.5``, ``layers.2.blocks.1``).
        attention: "vit", "swin" or None; picks the explainer's attention extractor.
        timm_name: name for `timm.create_model` when the network is timm's, else None.
        timm_kwargs: extra `create_model` kwargs (write them as `model_args` in timm's config.json).
        default_weights: "hub" or "random": what an unspecified weights source means.
        expand_types: module classes whose children are layer groups (besides plain containers).
        cam_candidates: module names offered to a layer search, before the check that they exist;
            None means every transformer block (attention architectures) or the stage outputs
            from timm's feature_info (generic timm CNNs).
    """

    key: str
    build: Builder
    head_prefixes: tuple[str, ...]
    input_size: int
    explanation: ExplanationDefaults
    attention: str | None = None
    timm_name: str | None = None
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    default_weights: str = "hub"
    expand_types: tuple[type[nn.Module], ...] = ()
    cam_candidates: Callable[[nn.Module], list[str]] | None = None

    def layer_groups(self, model: nn.Module) -> list[str]:
        """Ordered module-name prefixes from input to output, excluding the head."""
        return auto_layer_groups(model, self.head_prefixes, self.expand_types)

    def cam_layers(self, model: nn.Module) -> list[str]:
        """Candidate layers for a layer search, each an existing module name, in module order.

        Module (registration) order runs from input to output, so the last candidate is the deepest.
        """
        order = {name: i for i, name in enumerate(dict(model.named_modules()))}
        if self.cam_candidates is not None:
            names = self.cam_candidates(model)
        elif self.attention is not None:
            names = transformer_blocks(model, self.attention)
        else:
            names = [info["module"] for info in getattr(model, "feature_info", [])]
        if self.explanation.layer and self.explanation.layer not in names:
            names = [*names, self.explanation.layer]
        return sorted((n for n in dict.fromkeys(names) if n in order), key=order.__getitem__)


# --------------------------------------------------------------------------- helpers


def _is_under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def auto_layer_groups(
    model: nn.Module, head_prefixes: Sequence[str], expand_types: tuple[type[nn.Module], ...] = ()
) -> list[str]:
    """Module-name prefixes of the parameter-holding layers, in registration (input-to-output) order."""
    groups: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if any(_is_under(name, h) for h in head_prefixes):
                continue
            if next(child.parameters(), None) is None:
                continue
            contains_head = any(h.startswith(name + ".") for h in head_prefixes)
            plain = type(child) in (nn.Sequential, nn.ModuleList)
            if contains_head or plain or isinstance(child, expand_types):
                visit(child, name + ".")
            else:
                groups.append(name)

    visit(model, "")
    return groups


def init_head(model: nn.Module, head_prefixes: Iterable[str], std: float = HEAD_INIT_STD) -> None:
    """Small init for the new head: weights ~ N(0, std), biases 0.

    Library head inits differ (kaiming-uniform, trunc-normal, zeros, scaled); large starting logits
    would take the thesis's lr 2e-5 epochs to undo. One small init makes every architecture start
    near uniform predictions while still giving the backbone non-zero gradients.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for prefix in head_prefixes:
            for pname, param in modules[prefix].named_parameters():
                if pname.endswith("bias") or param.ndim < 2:
                    param.zero_()
                else:
                    param.normal_(0.0, std)


def _children(model: nn.Module, prefix: str) -> list[str]:
    module = model.get_submodule(prefix)
    return [f"{prefix}.{n}" for n, _ in module.named_children()]


def transformer_blocks(model: nn.Module, attention: str) -> list[str]:
    """Names of the blocks whose attention the explainer reads: ``blocks.<i>`` (ViT) or
    ``layers.<stage>.blocks.<i>`` (Swin), input to output."""
    if attention == "vit":
        return [f"blocks.{i}" for i in range(len(model.get_submodule("blocks")))]
    if attention == "swin":
        stages = model.get_submodule("layers")
        return [f"layers.{s}.blocks.{b}" for s, stage in enumerate(stages) for b in range(len(stage.blocks))]
    raise ValueError(f"unknown attention kind {attention!r}")


def _timm_builder(name: str, *, img_size_kwarg: bool = False, pretrained_ok: bool = True, **kwargs: Any) -> Builder:
    def build(num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
        if pretrained and not pretrained_ok:
            raise InvalidArgument(f"{name} with {kwargs} has no pretrained weights")
        args = dict(kwargs)
        if image_size is not None and img_size_kwarg:
            args["img_size"] = image_size
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **args)

    return build


def _build_luna(num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
    if pretrained:
        raise InvalidArgument("luna is trained from scratch: it has no pretrained weights")
    try:
        return Luna(num_classes, image_size or LUNA_INPUT_SIZE)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def _build_alexnet(num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1 if pretrained else None
    model = torchvision.models.alexnet(weights=weights)
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    return model


def _build_efficientnetv2_s(num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
    weights = torchvision.models.EfficientNet_V2_S_Weights.IMAGENET1K_V1 if pretrained else None
    model = torchvision.models.efficientnet_v2_s(weights=weights)
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
    return model


def _build_convnext_tiny(num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
    weights = torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1 if pretrained else None
    model = torchvision.models.convnext_tiny(weights=weights)
    model.classifier[2] = nn.Linear(model.classifier[2].in_features, num_classes)
    return model


def _stages_then_blocks(stages: Sequence[str], fine: Sequence[str]) -> Callable[[nn.Module], list[str]]:
    """Candidates: each stage output, then each block output of the `fine` stages."""

    def candidates(model: nn.Module) -> list[str]:
        names = list(stages)
        for stage in fine:
            names += _children(model, stage)
        return names

    return candidates


def _gradcam(layer: str, threshold: float = 0.4) -> ExplanationDefaults:
    return ExplanationDefaults(method="gradcam", layer=layer, threshold=threshold, normalization="max")


def _attention(layer: str, threshold: float = 0.4) -> ExplanationDefaults:
    return ExplanationDefaults(method="attention", layer=layer, threshold=threshold, normalization="max")


# --------------------------------------------------------------------------- the zoo

TEST_SWIN_KWARGS: dict[str, Any] = {
    "img_size": 64,
    "embed_dim": 16,
    "depths": (1, 1, 2, 1),
    "num_heads": (1, 1, 2, 2),
    "window_size": 4,
}

ZOO: dict[str, ArchSpec] = {
    "luna": ArchSpec(
        key="luna",
        build=_build_luna,
        head_prefixes=("head_linear",),
        input_size=LUNA_INPUT_SIZE,
        explanation=_gradcam("block4.maxpool", 0.4),
        default_weights="random",
        cam_candidates=lambda m: [f"block{i}.{n}" for i in range(1, 5) for n in ("relu2", "maxpool")],
    ),
    "alexnet": ArchSpec(
        key="alexnet",
        build=_build_alexnet,
        head_prefixes=("classifier.6",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_gradcam("features.11", 0.5),
        cam_candidates=lambda m: ["features.1", "features.4", "features.7", "features.9", "features.11"],
    ),
    "resnet18": ArchSpec(
        key="resnet18",
        build=_timm_builder("resnet18.tv_in1k"),
        head_prefixes=("fc",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_gradcam("layer4.0.downsample.0", 0.4),
        timm_name="resnet18.tv_in1k",
        cam_candidates=_stages_then_blocks(("layer1", "layer2", "layer3", "layer4"), ("layer3", "layer4")),
    ),
    "efficientnetv2_s": ArchSpec(
        key="efficientnetv2_s",
        build=_build_efficientnetv2_s,
        head_prefixes=("classifier.1",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_gradcam("features.6.0.block.0", 0.4),
        cam_candidates=_stages_then_blocks(tuple(f"features.{i}" for i in range(1, 8)), ("features.6",)),
    ),
    "convnext_tiny": ArchSpec(
        key="convnext_tiny",
        build=_build_convnext_tiny,
        head_prefixes=("classifier.2",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_gradcam("features.5.7.block.6", 0.4),
        cam_candidates=lambda m: (
            ["features.1", "features.3"]
            + [f"features.5.{i}.block.6" for i in range(len(m.get_submodule("features.5")))]
            + ["features.5", "features.7"]
        ),
    ),
    "vit_b16": ArchSpec(
        key="vit_b16",
        build=_timm_builder("vit_base_patch16_224.augreg2_in21k_ft_in1k", img_size_kwarg=True),
        head_prefixes=("head",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_attention("blocks.5", 0.4),
        attention="vit",
        timm_name="vit_base_patch16_224.augreg2_in21k_ft_in1k",
    ),
    "swin_t": ArchSpec(
        key="swin_t",
        build=_timm_builder("swin_tiny_patch4_window7_224.ms_in1k", img_size_kwarg=True),
        head_prefixes=("head.fc",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_attention("layers.2.blocks.1", 0.4),
        attention="swin",
        timm_name="swin_tiny_patch4_window7_224.ms_in1k",
        expand_types=(SwinTransformerStage,),
    ),
    "dino_vits16": ArchSpec(
        key="dino_vits16",
        build=_timm_builder("vit_small_patch16_224.dino", img_size_kwarg=True),
        head_prefixes=("head",),
        input_size=DEFAULT_INPUT_SIZE,
        explanation=_attention("blocks.11", 0.4),
        attention="vit",
        timm_name="vit_small_patch16_224.dino",
    ),
    "efficientnet_lite0": ArchSpec(
        key="efficientnet_lite0",
        build=_timm_builder("tf_efficientnet_lite0"),
        head_prefixes=("classifier",),
        input_size=DEFAULT_INPUT_SIZE,
        # Analogue of the thesis's EfficientNetV2 layer: the expansion conv of the first block of the
        # last stride-2 stage, still at 14 x 14 for a 224 input.
        explanation=_gradcam("blocks.5.0.bn1", 0.4),
        timm_name="tf_efficientnet_lite0",
        cam_candidates=_stages_then_blocks(tuple(f"blocks.{i}" for i in range(7)) + ("bn2",), ("blocks.5",)),
    ),
    # Tiny models for fast tests (random weights, built in milliseconds).
    "test_resnet": ArchSpec(
        key="test_resnet",
        build=_timm_builder("test_resnet"),
        head_prefixes=("fc",),
        input_size=160,
        explanation=_gradcam("layer4.0.downsample.1", 0.4),
        timm_name="test_resnet",
        default_weights="random",
        cam_candidates=_stages_then_blocks(("layer1", "layer2", "layer3", "layer4"), ()),
    ),
    "test_efficientnet": ArchSpec(
        key="test_efficientnet",
        build=_timm_builder("test_efficientnet"),
        head_prefixes=("classifier",),
        input_size=160,
        explanation=_gradcam("blocks.4.0.bn1", 0.4),
        timm_name="test_efficientnet",
        default_weights="random",
        cam_candidates=_stages_then_blocks(tuple(f"blocks.{i}" for i in range(5)) + ("bn2",), ()),
    ),
    "test_convnext": ArchSpec(
        key="test_convnext",
        build=_timm_builder("test_convnext"),
        head_prefixes=("head.fc",),
        input_size=160,
        explanation=_gradcam("stages.2", 0.4),
        timm_name="test_convnext",
        default_weights="random",
        cam_candidates=_stages_then_blocks(("stages.0", "stages.1", "stages.2", "stages.3"), ()),
    ),
    "test_vit": ArchSpec(
        key="test_vit",
        build=_timm_builder("test_vit", img_size_kwarg=True),
        head_prefixes=("head",),
        input_size=160,
        explanation=_attention("blocks.2", 0.4),
        attention="vit",
        timm_name="test_vit",
        default_weights="random",
    ),
    "test_swin": ArchSpec(
        key="test_swin",
        build=_timm_builder("swin_tiny_patch4_window7_224", img_size_kwarg=True, pretrained_ok=False, **TEST_SWIN_KWARGS),
        head_prefixes=("head.fc",),
        input_size=64,
        explanation=_attention("layers.2.blocks.1", 0.4),
        attention="swin",
        timm_name="swin_tiny_patch4_window7_224",
        timm_kwargs=TEST_SWIN_KWARGS,
        default_weights="random",
        expand_types=(SwinTransformerStage,),
    ),
}

# Generic timm models whose attention the explainer can read (exact classes, no name sniffing).
_ATTENTION_BY_CLASS: dict[type[nn.Module], str] = {VisionTransformer: "vit", SwinTransformer: "swin"}


@functools.lru_cache(maxsize=64)
def _timm_spec(name: str) -> ArchSpec:
    """A spec for any timm model, derived from a parameter-free (meta device) instance."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=2)
    except Exception:  # a few models compute values at init; build those for real
        try:
            model = timm.create_model(name, pretrained=False, num_classes=2)
        except Exception as exc:
            raise InvalidArgument(f"timm model {name!r} cannot be built as a classifier: {exc}") from exc
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, tuple | list) else (classifier,)
    head_prefixes = tuple(n for n, m in model.named_modules() if any(m is h for h in heads))
    if not head_prefixes:
        raise InvalidArgument(f"timm model {name!r} has no classification head this service can replace")
    input_size = int(model.pretrained_cfg.get("input_size", (3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE))[-1])
    attention = _ATTENTION_BY_CLASS.get(type(model))
    if attention is not None:
        explanation = _attention(transformer_blocks(model, attention)[-1])
    else:
        stages = [info["module"] for info in getattr(model, "feature_info", [])]
        layer = stages[-1] if stages else auto_layer_groups(model, head_prefixes)[-1]
        explanation = _gradcam(layer)
    return ArchSpec(
        key=name,
        build=_timm_builder(name, img_size_kwarg=attention is not None),
        head_prefixes=head_prefixes,
        input_size=input_size,
        explanation=explanation,
        attention=attention,
        timm_name=name,
    )


def get_spec(name: str) -> ArchSpec:
    """The spec of a zoo key, else of a timm model name; InvalidArgument for anything else."""
    spec = ZOO.get(name)
    if spec is not None:
        return spec
    if name and timm.is_model(name):
        return _timm_spec(name)
    raise InvalidArgument(f"unknown architecture {name!r}; valid: {', '.join(ZOO)} or any timm model name")


def build_model(
    architecture: str, num_classes: int, *, pretrained: bool = False, image_size: int | None = None
) -> nn.Module:
    """Build `architecture` with a new, small-initialised `num_classes` head.

    `image_size` matters for Luna (its linear layer) and for ViT / Swin (position embeddings and
    windows); convolutional networks with global pooling ignore it.
    """
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {num_classes}")
    spec = get_spec(architecture)
    model = spec.build(num_classes, pretrained, image_size)
    init_head(model, spec.head_prefixes)
    return model
