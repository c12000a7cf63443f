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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from common.errors import InvalidArgument

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
    needs_gradients: bool = True
    centre_activations: bool = False

    def channel_weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """Weights ``N x C`` from activations and gradients, both ``N x C x h x w``."""
        raise NotImplementedError

    def __call__(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        if self.centre_activations:
            activations = activations - activations.mean(dim=(2, 3), keepdim=True)
        weights = self.channel_weights(activations, gradients)
        return torch.relu(torch.einsum("nc,nchw->nhw", weights, activations))


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


METHODS: dict[str, CamMethod] = {m.name: m for m in (GradCam(), GradCamPlusPlus(), EigenCam())}

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

    With ``for_gradients`` the output is detached into a leaf that requires grad, autograd is switched
    on for the rest of this thread's forward, and the module returns a clone of the leaf (so in-place
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
        leaf = output.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # thread-local; the caller's no_grad block restores it
        self.activation = leaf
        return leaf.clone()


@contextmanager
def recording(module: nn.Module, for_gradients: bool) -> Iterator[_Recorder]:
    """Record ``module``'s output during this thread's forwards; the hook is removed on exit."""
    recorder = _Recorder(for_gradients)
    handle = module.register_forward_hook(recorder)
    try:
        yield recorder
    finally:
        handle.remove()


def explain_batch(
    model: nn.Module,
    x: Tensor,
    layer: str,
    method: str,
    target: list[int] | None = None,
    *,
    layout: SpatialLayout | None = None,
) -> tuple[Tensor, Tensor]:
    """Class activation maps for a batch.

    Args:
        model: a network in eval mode (not modified).
        x: preprocessed images ``N x C x H x W``.
        layer: a name from ``model.named_modules()`` (see :func:`valid_layers`).
        method: ``"gradcam"``, ``"gradcam++"`` or ``"eigencam"``.
        target: class index per image; ``None`` explains each image's predicted class. Ignored by
            EigenCAM, which is class-agnostic.
        layout: how the layer's activation maps to space; ``None`` uses :func:`infer_layout`.

    Returns:
        ``(cams, logits)``: ``N x h x w`` float32 maps at the layer's resolution, ReLU'd and
        unnormalised, and the detached ``N x classes`` logits.

    Raises:
        InvalidArgument: unknown method or layer, bad input or target, a layer that does not run in
            the forward pass or that the explained score does not depend on.
    """
    cam = METHODS.get(method)
    if cam is None:
        raise InvalidArgument(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidArgument("input must be a non-empty N x C x H x W tensor")
    module = resolve_layer(model, layer)
    image_hw = (int(x.shape[2]), int(x.shape[3]))

    with recording(module, cam.needs_gradients) as recorder:
        if cam.needs_gradients:
            with torch.inference_mode(False), torch.no_grad():
                inputs = x.clone() if x.is_inference() else x
                logits = model(inputs)
        else:
            with torch.inference_mode():
                logits = model(x)
    activation = recorder.activation
    if activation is None:
        raise InvalidArgument(f"layer {layer!r} did not run in the forward pass")
    _check_logits(logits, x.shape[0])

    gradients: Tensor | None = None
    if cam.needs_gradients:
        with torch.inference_mode(False), torch.enable_grad():  # whatever mode the caller is in
            classes = _targets(target, logits)
            score = logits.gather(1, classes[:, None]).sum()
            if not score.requires_grad:
                raise InvalidArgument(f"the model's output does not depend on layer {layer!r}")
            (gradients,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradients is None:
            raise InvalidArgument(f"the model's output does not depend on layer {layer!r}")
        activation = activation.detach()

    layout = layout or infer_layout(model, activation)
    acts = to_nchw(activation, layout, image_hw).float()
    grads = to_nchw(gradients, layout, image_hw).float() if gradients is not None else None
    if acts.shape[0] != x.shape[0]:
        raise InvalidArgument(
            f"layer {layer!r} outputs {acts.shape[0]} maps for {x.shape[0]} images (e.g. Swin windows): "
            "pick a block or stage output")
    with torch.inference_mode(False), torch.no_grad():
        cams = cam(acts, grads)
    return cams.float().contiguous(), logits.detach()


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
    "METHODS",
    "CamMethod",
    "EigenCam",
    "GradCam",
    "GradCamPlusPlus",
    "SpatialLayout",
    "explain_batch",
    "infer_layout",
    "recording",
    "resolve_layer",
    "to_nchw",
    "valid_layers",
]
