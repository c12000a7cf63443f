"""Class activation maps (Grad-CAM, Grad-CAM++, EigenCAM) at a named layer of any ``nn.Module``.

One base class, :class:`CamMethod`; each method overrides a single weighting function that turns the
layer's activations (and gradients) into one weight per channel. The map is
``ReLU(sum_c weight_c * activation_c)`` at the layer's resolution, unnormalised.

Per-call state only: every call registers its own hooks inside a context manager and removes them in
``finally``. A hook fires for every forward through its module, whichever thread runs it, so each
hook records only for the thread that registered it; concurrent calls on one model do not see each
other. The caller's model is never mutated: no ``requires_grad_`` on parameters, no train/eval
switching, and no ``.grad`` left behind. Gradients come from ``torch.autograd.grad`` with respect to
the layer's output, which the hook detaches into a fresh leaf, so backward stops at the layer and no
parameter gradient is computed. The part of the forward below the layer runs without autograd.
"""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from common.errors import InvalidArgument
from services.explainer.attention import ATTENTION

LayoutKind = Literal["nchw", "nhwc", "tokens"]


@dataclass(frozen=True)
class SpatialLayout:
    """How a layer's activation maps onto a spatial grid.

    Attributes:
        kind: ``"nchw"`` (CNNs), ``"nhwc"`` (timm Swin stages/blocks) or ``"tokens"``
            (``N x (prefix + h*w) x C``: ViT blocks).
        prefix_tokens: tokens before the patch tokens (class / register tokens) to drop; tokens only.
        grid: ``(h, w)`` of the patch tokens; ``None`` infers it from the token count and the image's
            aspect ratio. Tokens only.
    """

    kind: LayoutKind = "nchw"
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None


class CamMethod:
    """Base of the CAM family: subclasses override :meth:`channel_weights` only.

    ``centre_activations`` (EigenCAM) subtracts each channel's spatial mean before weighting.
    """

    name: str = ""
    family = "cam"
    needs_layer = True
    class_agnostic = False
    needs_gradients: bool = True
    centre_activations: bool = False

    def maps(self, model: nn.Module, x: Tensor, request: MapRequest) -> tuple[Tensor, Tensor]:
        return explain_batch(model, x, request.layer, self, None if self.class_agnostic else request.target)

    def channel_weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """Weights ``N x C`` from activations and gradients, both ``N x C x h x w``."""
        raise NotImplementedError

    def combine(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """The map before the ReLU, ``N x h x w``: by default the channel-weighted sum of activations.
        Element-wise methods (LayerCAM, HiResCAM) override this instead of :meth:`channel_weights`."""
        return torch.einsum("nc,nchw->nhw", self.channel_weights(activations, gradients), activations)

    def __call__(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        if self.centre_activations:
            activations = activations - activations.mean(dim=(2, 3), keepdim=True)
        return torch.relu(self.combine(activations, gradients))


class GradCam(CamMethod):
    """Grad-CAM (Selvaraju et al.): a channel's weight is the spatial mean of its gradient."""

    name = "gradcam"

    def channel_weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        assert gradients is not None
        return gradients.mean(dim=(2, 3))


class GradCamPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhyay et al.): positive gradients weighted by alpha.

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3)`` per position, ``0`` where the denominator is ``0``;
    the weight is ``sum_ij alpha_ij * relu(g_ij)``.
    """

    name = "gradcam++"

    def channel_weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        assert gradients is not None
        g2 = gradients.pow(2)
        g3 = gradients.pow(3)
        spatial_sum = activations.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * g2 + spatial_sum * g3
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


class EigenCam(CamMethod):
    """EigenCAM (Muhammad & Yeasin): projection of the activations on their first principal component.

    Gradient-free and class-agnostic. The ``h*w x C`` activation matrix of each image, centred per
    channel (as pytorch-grad-cam does: uncentred, a layer with signed outputs can project entirely
    below zero and vanish under the ReLU), is decomposed by SVD; the weights are the first right
    singular vector, its sign chosen so that the map correlates positively with the channel-mean
    activation (SVD's sign is arbitrary).
    """

    name = "eigencam"
    class_agnostic = True
    needs_gradients = False
    centre_activations = True

    def channel_weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        n, c, h, w = activations.shape
        matrix = activations.reshape(n, c, h * w).transpose(1, 2).double()  # N x hw x C, centred
        _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        first = vh[:, 0, :]  # N x C
        projection = torch.einsum("npc,nc->np", matrix, first)
        mean_map = matrix.mean(dim=2)
        covariance = ((projection - projection.mean(1, keepdim=True))
                      * (mean_map - mean_map.mean(1, keepdim=True))).sum(1)
        sign = torch.where(covariance < 0, -1.0, 1.0).to(first.dtype)
        return (first * sign[:, None]).to(activations.dtype)


class LayerCam(CamMethod):
    """LayerCAM (Jiang et al.): every position weighted by its own positive gradient,
    ``ReLU(sum_c relu(g_c) * A_c)``. Unlike Grad-CAM's spatial mean, the weighting keeps the layer's
    resolution, so earlier (finer) layers give usable maps."""

    name = "layercam"

    def combine(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        assert gradients is not None
        return (torch.relu(gradients) * activations).sum(dim=1)


class HiResCam(CamMethod):
    """HiResCAM (Draelos & Carin): ``ReLU(sum_c g_c * A_c)``, element-wise gradient times activation.
    Faithful to the score for networks that end in global average pooling and a linear layer."""

    name = "hirescam"

    def combine(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        assert gradients is not None
        return (gradients * activations).sum(dim=1)


CAM_METHODS: dict[str, CamMethod] = {
    m.name: m for m in (GradCam(), GradCamPlusPlus(), EigenCam(), LayerCam(), HiResCam())
}

_LISTED_LEAVES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
)


def valid_layers(model: nn.Module) -> list[str]:
    """Names worth targeting: blocks / stages (modules with children) and conv, pool, norm, activation
    leaves. Any name of ``model.named_modules()`` is accepted; this list is what error messages show.
    """
    names = []
    for name, module in model.named_modules():
        if not name or isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue
        if next(module.children(), None) is not None or isinstance(module, _LISTED_LEAVES):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule called ``layer``; :class:`InvalidArgument` listing valid names otherwise."""
    modules = dict(model.named_modules())
    module = modules.get(layer) if layer else None
    if module is not None and not isinstance(module, nn.ModuleList | nn.ModuleDict):
        return module
    candidates = valid_layers(model)
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.6)
    blocks = [n for n in candidates if next(modules[n].children(), None) is not None]
    shown = sorted(blocks or candidates, key=lambda n: n.count("."))[:40]  # shallowest first
    message = f"unknown layer {layer!r}"
    if close:
        message += f"; did you mean {', '.join(close)}?"
    message += f" Blocks and stages: {', '.join(shown)}"
    if len(candidates) > len(shown):
        message += f" ({len(candidates)} targetable layers in all, conv/norm/pool/activation included)"
    raise InvalidArgument(message)


def infer_layout(model: nn.Module, activation: Tensor) -> SpatialLayout:
    """Default layout when the caller gives none.

    4-D activations are NCHW unless the model declares ``output_fmt == "NHWC"`` (timm Swin, whose
    stages and blocks are NHWC; its ``patch_embed.proj`` conv is NCHW and needs an explicit layout);
    3-D ones are tokens with ``model.num_prefix_tokens`` (timm ViT) prefix tokens, else none.
    """
    if activation.dim() == 4:
        return SpatialLayout("nhwc" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "nchw")
    if activation.dim() == 3:
        prefix = getattr(model, "num_prefix_tokens", 0)
        return SpatialLayout("tokens", prefix_tokens=int(prefix) if isinstance(prefix, int) else 0)
    raise InvalidArgument(
        f"layer activation of shape {tuple(activation.shape)} has no spatial layout (need 3-D or 4-D)")


def to_nchw(activation: Tensor, layout: SpatialLayout, image_hw: tuple[int, int]) -> Tensor:
    """Reshape an activation (or its gradient) to ``N x C x h x w`` according to ``layout``."""
    if layout.kind == "nchw" and activation.dim() == 4:
        return activation
    if layout.kind == "nhwc" and activation.dim() == 4:
        return activation.permute(0, 3, 1, 2)
    if layout.kind == "tokens" and activation.dim() == 3:
        n, tokens, c = activation.shape
        patches = tokens - layout.prefix_tokens
        h, w = layout.grid or _token_grid(patches, image_hw)
        if patches <= 0 or h * w != patches:
            raise InvalidArgument(
                f"{tokens} tokens minus {layout.prefix_tokens} prefix tokens do not form a {h}x{w} grid")
        return activation[:, layout.prefix_tokens:, :].transpose(1, 2).reshape(n, c, h, w)
    raise InvalidArgument(
        f"activation of shape {tuple(activation.shape)} does not fit layout {layout.kind!r}")


def _token_grid(patches: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` with ``h * w == patches`` closest to the image's aspect ratio."""
    height, width = image_hw
    h = max(1, round(math.sqrt(patches * height / width)))
    for candidate in sorted(range(1, patches + 1), key=lambda k: abs(k - h)):
        if patches % candidate == 0:
            return candidate, patches // candidate
    return h, max(1, patches // h)


class _Recorder:
    """A forward hook that records one module's output for the calling thread only.

    With ``for_gradients``: at the first recorded layer of a forward (autograd still off) the output
    is detached into a leaf that requires grad and autograd is switched on for the rest of this
    thread's forward; a deeper layer (autograd already on) records its output as it is, so gradients
    to the shallower layer still flow through it. Either way the module returns a clone (so in-place
    ops downstream, e.g. ``ReLU(inplace=True)``, leave the recorded activation intact). If the module
    runs several times in one forward, the last run is kept.
    """

    def __init__(self, for_gradients: bool) -> None:
        self.owner = threading.get_ident()
        self.for_gradients = for_gradients
        self.activation: Tensor | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Tensor | None:
        if threading.get_ident() != self.owner:
            return None
        if not isinstance(output, Tensor):
            raise InvalidArgument(f"layer output is a {type(output).__name__}, not a tensor")
        if not self.for_gradients:
            self.activation = output.clone()
            return None
        if torch.is_grad_enabled() and output.requires_grad:
            self.activation = output
            return output.clone()
        leaf = output.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # thread-local; the caller's no_grad block restores it
        self.activation = leaf
        return leaf.clone()


@contextmanager
def recording(module: nn.Module, for_gradients: bool) -> Iterator[_Recorder]:
    """Record ``module``'s output during this thread's forwards; the hook is removed on exit."""
    with recording_all([module], for_gradients) as (recorder,):
        yield recorder


@contextmanager
def recording_all(modules: list[nn.Module], for_gradients: bool) -> Iterator[list[_Recorder]]:
    """:func:`recording` for several modules at once (one forward records them all)."""
    recorders = [_Recorder(for_gradients) for _ in modules]
    handles = []
    try:
        for module, recorder in zip(modules, recorders, strict=True):
            handles.append(module.register_forward_hook(recorder))
        yield recorders
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class FusedLayer:
    """One layer of a layer spec and its weight in the fusion."""

    name: str
    weight: float = 1.0


def parse_layers(spec: str) -> list[FusedLayer]:
    """A layer spec: one module name, or several joined by ``+`` (each optionally ``name:weight``).

    ``"blocks.5"`` is one layer; ``"blocks.3+blocks.5:0.7"`` fuses two (missing weights are 1). Weights
    must be >= 0 with a positive sum; a name may appear once. The weights are normalised to sum to 1.
    """
    parts = [p.strip() for p in spec.split("+")] if spec else [""]
    layers: list[FusedLayer] = []
    for part in parts:
        name, _, weight_text = part.partition(":")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise InvalidArgument(f"layer weight {weight_text!r} in {spec!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(f"layer weight {weight_text!r} in {spec!r} must be finite and >= 0")
        layers.append(FusedLayer(name.strip(), weight))
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"layer spec {spec!r} names a layer twice")
    total = sum(layer.weight for layer in layers)
    if total <= 0:
        raise InvalidArgument(f"layer spec {spec!r} has no positive weight")
    return [FusedLayer(layer.name, layer.weight / total) for layer in layers]


def format_layers(layers: list[FusedLayer]) -> str:
    """Inverse of :func:`parse_layers` (a single layer is its bare name)."""
    if len(layers) == 1:
        return layers[0].name
    return "+".join(f"{layer.name}:{layer.weight:g}" for layer in layers)


def fuse_maps(maps: list[Tensor], weights: list[float]) -> Tensor:
    """Weighted mean of per-layer maps (each ``N x h_k x w_k``) at the finest resolution.

    Each map is divided by its per-image maximum first, so a layer's weight is its share of the
    fused map whatever the scale of its activations; coarser maps are resized bilinearly.
    """
    if len(maps) == 1:
        return maps[0]
    size = max((tuple(m.shape[1:]) for m in maps), key=lambda hw: hw[0] * hw[1])
    fused = torch.zeros(maps[0].shape[0], *size)
    for layer_map, weight in zip(maps, weights, strict=True):
        peak = layer_map.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        scaled = (layer_map / peak)[:, None]
        if tuple(layer_map.shape[1:]) != size:
            scaled = torch.nn.functional.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
        fused += weight * scaled[:, 0]
    return fused


def explain_batch(
    model: nn.Module,
    x: Tensor,
    layer: str,
    method: str | CamMethod,
    target: list[int] | None = None,
    *,
    layout: SpatialLayout | None = None,
) -> tuple[Tensor, Tensor]:
    """Class activation maps for a batch.

    Args:
        model: a network in eval mode (not modified).
        x: preprocessed images ``N x C x H x W``.
        layer: a name from ``model.named_modules()`` (see :func:`valid_layers`), or a fusion of
            several (``"a+b:0.7"``, see :func:`parse_layers` and :func:`fuse_maps`).
        method: a name of :data:`CAM_METHODS` (``"gradcam"``, ``"layercam"``, ...) or a method object.
        target: class index per image; ``None`` explains each image's predicted class. Ignored by
            EigenCAM, which is class-agnostic.
        layout: how the layer's activation maps to space; ``None`` uses :func:`infer_layout`.

    Returns:
        ``(cams, logits)``: ``N x h x w`` float32 maps at the (finest) layer's resolution, ReLU'd and
        unnormalised, and the detached ``N x classes`` logits.

    Raises:
        InvalidArgument: unknown method or layer, bad input or target, a layer that does not run in
            the forward pass or that the explained score does not depend on.
    """
    layers = parse_layers(layer)
    maps, logits = layer_maps(model, x, [fused.name for fused in layers], method, target, layout=layout)
    return fuse_maps(maps, [fused.weight for fused in layers]).float().contiguous(), logits


def layer_maps(
    model: nn.Module,
    x: Tensor,
    layers: list[str],
    method: str | CamMethod,
    target: list[int] | None = None,
    *,
    layout: SpatialLayout | None = None,
) -> tuple[list[Tensor], Tensor]:
    """One map per layer (each at its own resolution) from one forward and one backward, and the logits.

    The layer / threshold search calls this to fuse the same maps under several weightings.
    """
    cam = CAM_METHODS.get(method) if isinstance(method, str) else method
    if cam is None:
        raise InvalidArgument(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidArgument("input must be a non-empty N x C x H x W tensor")
    modules = [resolve_layer(model, name) for name in layers]
    image_hw = (int(x.shape[2]), int(x.shape[3]))

    with recording_all(modules, cam.needs_gradients) as recorders:
        if cam.needs_gradients:
            with torch.inference_mode(False), torch.no_grad():
                inputs = x.clone() if x.is_inference() else x
                logits = model(inputs)
        else:
            with torch.inference_mode():
                logits = model(x)
    activations = [recorder.activation for recorder in recorders]
    for name, activation in zip(layers, activations, strict=True):
        if activation is None:
            raise InvalidArgument(f"layer {name!r} did not run in the forward pass")
    _check_logits(logits, x.shape[0])

    gradients: list[Tensor | None] = [None] * len(layers)
    if cam.needs_gradients:
        with torch.inference_mode(False), torch.enable_grad():  # whatever mode the caller is in
            classes = _targets(target, logits)
            score = logits.gather(1, classes[:, None]).sum()
            if not score.requires_grad:
                raise InvalidArgument(f"the model's output does not depend on layer {layers[0]!r}")
            gradients = list(torch.autograd.grad(score, activations, allow_unused=True))
        for name, gradient in zip(layers, gradients, strict=True):
            if gradient is None:
                raise InvalidArgument(f"the model's output does not depend on layer {name!r}")
        activations = [a.detach() for a in activations]

    maps = []
    for name, activation, gradient in zip(layers, activations, gradients, strict=True):
        assert activation is not None
        shape = layout or infer_layout(model, activation)
        acts = to_nchw(activation, shape, image_hw).float()
        grads = to_nchw(gradient, shape, image_hw).float() if gradient is not None else None
        if acts.shape[0] != x.shape[0]:
            raise InvalidArgument(
                f"layer {name!r} outputs {acts.shape[0]} maps for {x.shape[0]} images (e.g. Swin windows): "
                "pick a block or stage output")
        with torch.inference_mode(False), torch.no_grad():
            maps.append(cam(acts, grads).float().contiguous())
    return maps, logits.detach()


# --------------------------------------------------------------------------- pixel-level gradients


@dataclass(frozen=True)
class GradientOptions:
    """Options of the pixel-level gradient methods.

    Attributes:
        smooth_samples: SmoothGrad: average the gradients over this many noisy copies of the input
            (0 = off).
        smooth_noise: the noise's standard deviation as a fraction of each image's value range.
        steps: integrated gradients: midpoint-rule steps on the straight path from the zero input
            (the mean image after normalisation) to the input.
    """

    smooth_samples: int = 0
    smooth_noise: float = 0.15
    steps: int = 16

    def checked(self) -> GradientOptions:
        if not 0 <= self.smooth_samples <= 64:
            raise InvalidArgument(f"smooth_samples must be in [0, 64], got {self.smooth_samples}")
        if not 0.0 < self.smooth_noise <= 1.0:
            raise InvalidArgument(f"smooth_noise must be in (0, 1], got {self.smooth_noise}")
        if not 1 <= self.steps <= 128:
            raise InvalidArgument(f"steps must be in [1, 128], got {self.steps}")
        return self


class PixelMethod:
    """Gradient x input at the resolution of the input: ``|sum_c x_c * mean(d score / d x_c)|``.

    The mean runs over the points where the gradient is taken: the input itself (gradient x input),
    or ``alpha * x`` for ``steps`` values of ``alpha`` in (0, 1) (integrated gradients with the zero
    baseline), each optionally repeated on ``smooth_samples`` noisy copies (SmoothGrad). One forward
    and backward through the whole network per point, without hooks; gradients are taken with
    respect to a copy of the input only, so no parameter gradient is computed or left behind.
    """

    family = "pixel"
    needs_layer = False
    class_agnostic = False

    def __init__(self, name: str, integrated: bool) -> None:
        self.name = name
        self.integrated = integrated

    def maps(self, model: nn.Module, x: Tensor, request: MapRequest) -> tuple[Tensor, Tensor]:
        return input_gradient_maps(model, x, self.integrated, request.target, request.gradients)


def input_gradient_maps(model: nn.Module, x: Tensor, integrated: bool, target: list[int] | None,
                        options: GradientOptions = GradientOptions()) -> tuple[Tensor, Tensor]:
    """``N x H x W`` attribution maps (float32, non-negative, unnormalised) and the logits; see :class:`PixelMethod`."""
    options = options.checked()
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidArgument("input must be a non-empty N x C x H x W tensor")
    with torch.inference_mode():
        logits = model(x)
    _check_logits(logits, x.shape[0])
    classes = _targets(target, logits)
    with torch.inference_mode(False):
        base = x.clone()
        alphas = [(k + 0.5) / options.steps for k in range(options.steps)] if integrated else [1.0]
        generator = torch.Generator(device=base.device).manual_seed(0)  # the same noise for the same input
        span = (base.flatten(1).amax(1) - base.flatten(1).amin(1)).clamp_min(1e-6)[:, None, None, None]
        total = torch.zeros_like(base)
        for _ in range(max(1, options.smooth_samples)):
            noisy = base
            if options.smooth_samples:
                noise = torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype)
                noisy = base + noise * options.smooth_noise * span
            for alpha in alphas:
                point = (alpha * noisy).detach().requires_grad_(True)
                with torch.enable_grad():
                    score = model(point).gather(1, classes[:, None]).sum()
                    (gradient,) = torch.autograd.grad(score, point)
                total += gradient
        average = total / (len(alphas) * max(1, options.smooth_samples))
        maps = (base * average).sum(dim=1).abs()
    return maps.float().contiguous(), logits.clone()


PIXEL_METHODS: dict[str, PixelMethod] = {
    m.name: m for m in (PixelMethod("grad-x-input", integrated=False), PixelMethod("integrated-gradients", integrated=True))
}


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class MapRequest:
    """What a method needs besides the model and the input; each method reads its own fields."""

    layer: str = ""  # CAM: a layer spec (parse_layers); attention: a transformer block; pixel: unused
    target: list[int] | None = None  # class per image; None = the predicted class
    attention: str | None = None  # the architecture's attention kind ("vit", "swin"); None = none
    heads: list[int] | None = None  # attention heads to average; None = all
    gradients: GradientOptions = GradientOptions()


class ExplanationMethod(Protocol):
    """What the engine needs of a method: its name, family and one call that makes the raw maps.

    ``family``: ``"cam"`` (a layer spec, fusions included), ``"attention"`` (a transformer block of an
    architecture with attention maps) or ``"pixel"`` (no layer: maps at the input's resolution).
    """

    name: str
    family: str
    needs_layer: bool
    class_agnostic: bool

    def maps(self, model: nn.Module, x: Tensor, request: MapRequest) -> tuple[Tensor, Tensor]:
        """``(N x h x w`` non-negative unnormalised maps, detached ``N x classes`` logits)."""
        ...


#: Every explanation method by name: the one list the engine, the servicer and the CLI read (the
#: proto's ``Method`` enum names the same methods; ``method_names`` maps one to the other).
METHODS: dict[str, ExplanationMethod] = {**CAM_METHODS, **PIXEL_METHODS, ATTENTION.name: ATTENTION}


def _check_logits(logits: Any, batch: int) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InvalidArgument(f"model output must be N x classes logits, got {shape}")


def _targets(target: list[int] | None, logits: Tensor) -> Tensor:
    n, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if len(target) != n:
        raise InvalidArgument(f"{len(target)} targets for a batch of {n} images")
    for t in target:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < classes:
            raise InvalidArgument(f"target class {t!r} is not in [0, {classes})")
    return torch.tensor(target, dtype=torch.long, device=logits.device)


__all__ = [
    "CAM_METHODS",
    "METHODS",
    "PIXEL_METHODS",
    "ExplanationMethod",
    "FusedLayer",
    "GradientOptions",
    "HiResCam",
    "LayerCam",
    "MapRequest",
    "PixelMethod",
    "format_layers",
    "fuse_maps",
    "input_gradient_maps",
    "layer_maps",
    "parse_layers",
    "CamMethod",
    "EigenCam",
    "GradCam",
    "GradCamPlusPlus",
    "SpatialLayout",
    "explain_batch",
    "infer_layout",
    "recording",
    "recording_all",
    "resolve_layer",
    "to_nchw",
    "valid_layers",
]
