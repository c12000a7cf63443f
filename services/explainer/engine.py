"""One explanation pipeline for single images and datasets: preprocess → map → normalise → threshold → score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.errors import InvalidArgument
from common.images import preprocess_batch
from common.overlap import OverlapScores, overlap
from services.explainer import heatmap as hm
from services.explainer.attention import attention_batch
from services.explainer.cam import explain_batch
from services.explainer.model_store import LoadedModel
from services.explainer.regions import REGIONS, apply_region

CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
METHODS = (*CAM_METHODS, "attention")


@dataclass(frozen=True)
class ExplainOptions:
    method: str = ""  # "" = the manifest's default
    layer: str = ""
    threshold: float | None = None
    normalization: str = ""  # "max" | "minmax" | "" = default
    target_class: str = ""  # "" = the predicted class
    heads: tuple[int, ...] = ()
    region: str = ""  # "all" | "peak" (services.explainer.regions) | "" = the manifest default


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


def resolve_options(loaded: LoadedModel, opts: ExplainOptions) -> Resolved:
    defaults = loaded.manifest.explanation
    method = opts.method or defaults.method
    if method not in METHODS:
        raise InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "attention" and not loaded.spec.attention:
        raise InvalidArgument(
            f"architecture {loaded.manifest.architecture!r} has no attention maps; use one of {', '.join(CAM_METHODS)}")
    same_family = (method == "attention") == (defaults.method == "attention")
    layer = opts.layer or (defaults.layer if same_family else "")
    if not layer:
        if method == "attention":
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
    return Resolved(method, layer, float(threshold), normalization, region)


def _target(loaded: LoadedModel, name: str, n: int) -> list[int] | None:
    if not name:
        return None
    classes = loaded.manifest.classes
    if name not in classes:
        raise InvalidArgument(f"unknown class {name!r}; the model's classes are {classes}")
    return [classes.index(name)] * n


def compute_heatmaps(loaded: LoadedModel, images: list[np.ndarray], resolved: Resolved,
                     opts: ExplainOptions) -> tuple[list[np.ndarray], Tensor, list[int] | None]:
    """Normalised heatmaps at each image's size (float32 in [0, 1]), the softmax probabilities and the
    explained class per image (``None`` = the predicted one), before any threshold.

    The dataset evaluation and the layer / threshold search call this once per layer and threshold
    the maps as often as they need.
    """
    pre = loaded.manifest.preprocessing
    x = torch.from_numpy(preprocess_batch(images, pre.image_size, pre.mean, pre.std))
    target = _target(loaded, opts.target_class, len(images))
    if resolved.method == "attention":
        if target is not None:
            raise InvalidArgument("attention maps are class-agnostic: target_class cannot be set")
        maps, logits = attention_batch(loaded.model, x, loaded.spec.attention, resolved.layer,
                                       list(opts.heads) or None)
    else:
        maps, logits = explain_batch(loaded.model, x, resolved.layer, resolved.method, target)
    probs = torch.softmax(logits.float(), dim=1)
    normalised = hm.normalize(maps, resolved.normalization)
    heats = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        heats.append(hm.to_image_size(normalised[i:i + 1], h, w)[0].clamp_(0, 1).numpy().astype(np.float32))
    return heats, probs, target


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
