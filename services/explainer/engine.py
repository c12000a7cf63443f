"""One explanation pipeline for single images and datasets: preprocess → map → normalise → threshold → score.

The method comes from the one registry, :data:`services.explainer.cam.METHODS`; its ``family`` says
what ``layer`` means (a CAM layer spec, a transformer block, or nothing for the pixel methods).
With :class:`Tiling` the image is explained tile by tile at the model's input scale and the raw
maps are stitched before the one normalisation (:func:`tile_windows`, :func:`tiled_maps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import InvalidArgument
from common.images import preprocess_batch
from common.overlap import OverlapScores, overlap
from services.explainer import heatmap as hm
from services.explainer.cam import (
    METHODS,
    ExplanationMethod,
    GradientOptions,
    MapRequest,
    fuse_maps,
    layer_maps,
    parse_layers,
    resolve_layer,
)
from services.explainer.model_store import LoadedModel
from services.explainer.regions import REGIONS, apply_region

#: Most tiles one image may be cut into (a 4096 px image in 256 px tiles at 0.25 overlap: 441).
MAX_TILES = 1024
#: Tiles explained per forward.
TILE_BATCH = 16


@dataclass(frozen=True)
class Tiling:
    """Explain an image as overlapping tiles of ``tile_size`` pixels (0 = the model's input size)."""

    tile_size: int = 0
    overlap: float = 0.25


@dataclass(frozen=True)
class ExplainOptions:
    method: str = ""  # "" = the manifest's default
    layer: str = ""
    threshold: float | None = None
    normalization: str = ""  # "max" | "minmax" | "" = default
    target_class: str = ""  # "" = the predicted class
    heads: tuple[int, ...] = ()
    region: str = ""  # "all" | "peak" (services.explainer.regions) | "" = the manifest default
    gradients: GradientOptions = field(default_factory=GradientOptions)  # pixel-level methods only
    tiles: Tiling | None = None  # None = one resize of the whole image to the model's input size


@dataclass(frozen=True)
class Resolved:
    method: str
    layer: str
    threshold: float
    normalization: str
    region: str = "all"


@dataclass
class Explanation:
    heatmap: np.ndarray  # float32 H x W in [0, 1]
    mask: np.ndarray  # bool H x W
    predicted_class: str
    probability: float
    explained_class: str
    scores: OverlapScores | None = None


def method_of(name: str) -> ExplanationMethod:
    method = METHODS.get(name)
    if method is None:
        raise InvalidArgument(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return method


def check_layer(loaded: LoadedModel, method: str, layer: str) -> None:
    """A CAM layer spec whose layers all exist (the other families check their layer when they run)."""
    if method_of(method).family == "cam":
        for fused in parse_layers(layer):
            resolve_layer(loaded.model, fused.name)


def resolve_options(loaded: LoadedModel, opts: ExplainOptions) -> Resolved:
    defaults = loaded.manifest.explanation
    name = opts.method or defaults.method
    method = method_of(name)
    if method.family == "attention" and not loaded.spec.attention:
        cams = ", ".join(n for n, m in METHODS.items() if m.family != "attention")
        raise InvalidArgument(f"architecture {loaded.manifest.architecture!r} has no attention maps; use one of {cams}")
    same_family = method.family == method_of(defaults.method).family if defaults.method in METHODS else False
    layer = opts.layer or (defaults.layer if same_family else "")
    if not method.needs_layer:
        layer = ""
    elif not layer:
        if method.family == "attention":
            raise InvalidArgument("attention needs a block (layer), e.g. '6' or 'blocks.6'")
        candidates = loaded.spec.cam_layers(loaded.model)
        if not candidates:
            raise InvalidArgument(f"no default CAM layer for {loaded.manifest.architecture!r}; name one")
        layer = candidates[-1]
    threshold = defaults.threshold if opts.threshold is None else opts.threshold
    if not 0.0 <= threshold <= 1.0:
        raise InvalidArgument(f"threshold must be in [0, 1], got {threshold}")
    normalization = opts.normalization or defaults.normalization
    if normalization not in ("max", "minmax"):
        raise InvalidArgument(f"normalization must be 'max' or 'minmax', got {normalization!r}")
    region = opts.region or defaults.region or "all"
    if region not in REGIONS:
        raise InvalidArgument(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    if method.family == "attention" and opts.target_class:
        raise InvalidArgument("attention maps are class-agnostic: target_class cannot be set")
    opts.gradients.checked()
    if opts.tiles is not None:
        _check_tiling(opts.tiles)
    return Resolved(name, layer, float(threshold), normalization, region)


def _check_tiling(tiles: Tiling) -> None:
    if not 0 <= tiles.tile_size <= 8192:
        raise InvalidArgument(f"tile_size must be in [0, 8192] (0 = the model's input size), got {tiles.tile_size}")
    if not 0.0 <= tiles.overlap < 0.9:
        raise InvalidArgument(f"tile overlap must be in [0, 0.9), got {tiles.overlap}")


def _target(loaded: LoadedModel, name: str, n: int) -> list[int] | None:
    if not name:
        return None
    classes = loaded.manifest.classes
    if name not in classes:
        raise InvalidArgument(f"unknown class {name!r}; the model's classes are {classes}")
    return [classes.index(name)] * n


def _request(loaded: LoadedModel, resolved: Resolved, opts: ExplainOptions, target: list[int] | None) -> MapRequest:
    return MapRequest(layer=resolved.layer, target=target, attention=loaded.spec.attention,
                      heads=list(opts.heads) or None, gradients=opts.gradients)


def _inputs(loaded: LoadedModel, images: list[np.ndarray]) -> Tensor:
    pre = loaded.manifest.preprocessing
    return torch.from_numpy(preprocess_batch(images, pre.image_size, pre.mean, pre.std))


def compute_heatmaps(loaded: LoadedModel, images: list[np.ndarray], resolved: Resolved,
                     opts: ExplainOptions) -> tuple[list[np.ndarray], Tensor, list[int] | None]:
    """Normalised heatmaps at each image's size (float32 in [0, 1]), the softmax probabilities and the
    explained class per image (``None`` = the predicted one), before any threshold.

    The dataset evaluation and the layer / threshold search call this once per layer and threshold
    the maps as often as they need.
    """
    method = method_of(resolved.method)
    target = _target(loaded, opts.target_class, len(images))
    if opts.tiles is not None:
        raw, probs, target = tiled_maps(loaded, images, method, resolved, opts, target)
        normalised = [hm.normalize(r, resolved.normalization) for r in raw]
        return [n.clamp_(0, 1).numpy().astype(np.float32) for n in normalised], probs, target
    maps, logits = method.maps(loaded.model, _inputs(loaded, images), _request(loaded, resolved, opts, target))
    probs = torch.softmax(logits.float(), dim=1)
    return to_heatmaps(maps, images, resolved.normalization), probs, target


def to_heatmaps(maps: Tensor, images: list[np.ndarray], normalization: str) -> list[np.ndarray]:
    """Raw ``N x h x w`` maps → normalised float32 heatmaps at each image's size."""
    normalised = hm.normalize(maps, normalization)
    heats = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        heats.append(hm.to_image_size(normalised[i:i + 1], h, w)[0].clamp_(0, 1).numpy().astype(np.float32))
    return heats


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` windows of side ``tile`` (clipped to the image) covering it, neighbours
    overlapping by about ``overlap`` of a tile; the last row and column end at the image's edge."""
    def starts(length: int) -> list[int]:
        side = min(tile, length)
        if side == length:
            return [0]
        stride = max(1, int(round(side * (1.0 - overlap))))
        count = math.ceil((length - side) / stride) + 1
        return sorted({min(k * stride, length - side) for k in range(count)})

    th, tw = min(tile, height), min(tile, width)
    return [(y, x, y + th, x + tw) for y in starts(height) for x in starts(width)]


def tiled_maps(loaded: LoadedModel, images: list[np.ndarray], method: ExplanationMethod, resolved: Resolved,
               opts: ExplainOptions, target: list[int] | None) -> tuple[list[Tensor], Tensor, list[int]]:
    """Raw stitched maps at each image's size, the probabilities and the explained class per image.

    Each tile is resized to the model's input size (no resize when ``tile_size`` is 0, i.e. the input
    size) and explained; its raw map, resized back to the tile, is averaged into the image's map where
    tiles overlap. Raw maps are comparable between the tiles of one image (same model, same class), so
    the one normalisation afterwards keeps a strong tile strong. The image's prediction is that of
    its most defective tile (a part is defective if any tile is); its explained class, unless given,
    is that prediction, explained in every tile.
    """
    assert opts.tiles is not None
    size = opts.tiles.tile_size or loaded.manifest.preprocessing.image_size
    defect = loaded.manifest.defect_index if loaded.manifest.defect_class in loaded.manifest.classes else 0
    raw: list[Tensor] = []
    chosen_probs: list[Tensor] = []
    explained: list[int] = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        windows = tile_windows(h, w, size, opts.tiles.overlap)
        if len(windows) > MAX_TILES:
            raise InvalidArgument(f"{len(windows)} tiles of {size} px for a {w}x{h} image: at most {MAX_TILES}; "
                                  "use larger tiles or less overlap")
        crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for y0, x0, y1, x1 in windows]
        probs = []
        with torch.inference_mode():
            for k in range(0, len(crops), TILE_BATCH):
                probs.append(torch.softmax(loaded.model(_inputs(loaded, crops[k:k + TILE_BATCH])).float(), dim=1))
        tile_probs = torch.cat(probs)
        best = int(tile_probs[:, defect].argmax())
        chosen_probs.append(tile_probs[best])
        cls = target[i] if target is not None else int(tile_probs[best].argmax())
        explained.append(cls)
        total = torch.zeros(h, w)
        count = torch.zeros(h, w)
        for k in range(0, len(crops), TILE_BATCH):
            chunk = crops[k:k + TILE_BATCH]
            request = _request(loaded, resolved, opts, None if method.class_agnostic else [cls] * len(chunk))
            maps, _ = method.maps(loaded.model, _inputs(loaded, chunk), request)
            for (y0, x0, y1, x1), tile_map in zip(windows[k:k + TILE_BATCH], maps, strict=True):
                resized = F.interpolate(tile_map[None, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear",
                                        align_corners=False)[0, 0]
                total[y0:y1, x0:x1] += resized
                count[y0:y1, x0:x1] += 1
        raw.append(total / count)
    return raw, torch.stack(chosen_probs), explained


def explain_images(loaded: LoadedModel, images: list[np.ndarray], opts: ExplainOptions,
                   masks: list[np.ndarray | None] | None = None) -> tuple[Resolved, list[Explanation]]:
    """Explain a batch of decoded RGB images (any sizes); masks, when given, are at each image's size."""
    resolved = resolve_options(loaded, opts)
    heats, probs, target = compute_heatmaps(loaded, images, resolved, opts)
    out: list[Explanation] = []
    classes = loaded.manifest.classes
    for i, heat in enumerate(heats):
        mask = apply_region(hm.threshold(torch.from_numpy(heat), resolved.threshold).numpy(), heat, resolved.region)
        predicted = int(probs[i].argmax())
        explained = target[i] if target is not None else predicted
        gt = masks[i] if masks else None
        out.append(Explanation(
            heatmap=heat, mask=mask, predicted_class=classes[predicted], probability=float(probs[i, predicted]),
            explained_class=classes[explained],
            scores=overlap(mask, gt, heat) if gt is not None else None,
        ))
    return resolved, out


def candidate_heatmaps(loaded: LoadedModel, images: list[np.ndarray], method: str, specs: list[str],
                       normalization: str, opts: ExplainOptions) -> dict[str, list[np.ndarray]]:
    """Normalised heatmaps of one method at several layer specs (layers and fusions) for the same images.

    For the CAM family one forward and one backward record every layer the specs name, and each
    fusion is made from those maps (the same arithmetic as :func:`cam.explain_batch` on the spec);
    other families run once per spec.
    """
    family = method_of(method).family
    if family != "cam" or opts.tiles is not None:
        out = {}
        for spec in specs:
            resolved = Resolved(method, spec, 0.0, normalization)
            out[spec] = compute_heatmaps(loaded, images, resolved, opts)[0]
        return out
    parsed = {spec: parse_layers(spec) for spec in specs}
    names = list(dict.fromkeys(f.name for layers in parsed.values() for f in layers))
    target = _target(loaded, opts.target_class, len(images))
    maps, _ = layer_maps(loaded.model, _inputs(loaded, images), names, method, target)
    by_name = dict(zip(names, maps, strict=True))
    return {spec: to_heatmaps(fuse_maps([by_name[f.name] for f in layers], [f.weight for f in layers]).contiguous(),
                              images, normalization)
            for spec, layers in parsed.items()}
