"""Layer × threshold search on an annotated set: which explanation defaults localise defects best?

Each candidate layer's heatmaps are computed once per image (one forward and, for gradient methods,
one backward that stops at the layer); every threshold is then scored from one sort of the map (the
pixel counts above ``t`` for all ``t`` by binary search), so the cost grows with the layers, not with
layers × thresholds. (The ``"peak"`` region needs one connected-component pass per threshold.)

Objective (what a trivial map cannot game): mean IoU minus the mean IoU of the whole image marked,
on the same masks, over the images whose mask covers less than half the image (all images when
there are none). Marking everything scores exactly 0, so only a candidate with a positive score
localises better than not localising at all. Masks of half the image or more are left out of the
objective because on them a near-trivial map wins: on the casting boxes (43 % of them that large)
the plain mean IoU over all images was highest at threshold 0.05, where Grad-CAM marks 44 % of the
image and Grad-CAM++ 99 %. Ties go to the smaller predicted area. Mean IoU, predicted area and the layer's pointing game
(threshold-free) are reported over the same images as the score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import InvalidArgument
from common.overlap import overlap, pointing_hit
from services.explainer.annotated import AnnotatedSet, sample_batches
from services.explainer.cam import resolve_layer
from services.explainer.engine import ExplainOptions, Resolved, compute_heatmaps, resolve_options
from services.explainer.evaluate import Progress
from services.explainer.model_store import LoadedModel
from services.explainer.regions import peak_region

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Masks covering this fraction of the image or more are left out of the objective.
OBJECTIVE_MAX_MASK_AREA = 0.5


@dataclass(frozen=True)
class Candidate:
    layer: str
    threshold: float
    score: float  # mean IoU minus the whole-image baseline's mean IoU (objective images)
    mean_iou: float  # objective images
    predicted_area: float  # mean fraction of the image marked (objective images)
    pointing: float  # the layer's pointing game (objective images; does not depend on the threshold)


@dataclass(frozen=True)
class SearchOutcome:
    best: Candidate
    candidates: list[Candidate]  # layers in the given order, thresholds ascending
    method: str
    normalization: str
    region: str
    images: int  # images scored
    objective_images: int  # those the objective averages over (masks < OBJECTIVE_MAX_MASK_AREA, else all)
    whole_image_iou: float  # the baseline subtracted in every score, over the objective images
    empty_masks: int
    without_mask: int


def threshold_sweep(heat: np.ndarray, gt: np.ndarray, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """IoU and predicted-area fraction of ``heat > t`` against ``gt`` for every ``t`` of ``thresholds``.

    Exactly the counts of thresholding with :func:`heatmap.threshold` (strictly above, compared in
    float32) and scoring with :func:`common.overlap.overlap`, from two sorts instead of one pass per
    threshold.
    """
    flat = np.asarray(heat, dtype=np.float32).ravel()
    inside = np.sort(flat[np.asarray(gt, dtype=bool).ravel()])
    if inside.size == 0:
        raise InvalidArgument("defect mask marks no pixel: overlap is undefined")
    everything = np.sort(flat)
    t = np.asarray(thresholds, dtype=np.float32)
    predicted = everything.size - np.searchsorted(everything, t, side="right")
    intersection = inside.size - np.searchsorted(inside, t, side="right")
    union = predicted + inside.size - intersection
    return intersection / union, predicted / flat.size


def peak_threshold_sweep(heat: np.ndarray, gt: np.ndarray, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`threshold_sweep` for the ``"peak"`` region: one connected-component pass per threshold."""
    heat = np.asarray(heat, dtype=np.float32)
    scores = [overlap(peak_region(heat > np.float32(t), heat), gt) for t in thresholds]
    return np.array([s.iou for s in scores]), np.array([s.pred_area for s in scores])


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Sorted, distinct, rounded to 6 decimals (proto floats are float32: 0.3 arrives as 0.30000001)."""
    values = sorted({round(float(t), 6) for t in thresholds} or DEFAULT_THRESHOLDS)
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise InvalidArgument(f"thresholds must be in [0, 1], got {bad}")
    return values


def candidate_layers(model: LoadedModel, resolved: Resolved, layers: Sequence[str]) -> list[str]:
    """The requested layers (checked), else the architecture's candidates; InvalidArgument if none."""
    names = list(dict.fromkeys(layers)) or model.spec.cam_layers(model.model)
    if not names:
        raise InvalidArgument(f"architecture {model.manifest.architecture!r} offers no candidate layers; name some")
    if resolved.method != "attention":
        for name in names:
            resolve_layer(model.model, name)
    return names


@dataclass
class _Tally:
    """Sums over one set of images: IoU and predicted area per region, layer and threshold; the pointing
    game per layer and the whole image's IoU, which do not depend on the region or the threshold."""

    regions: int
    layers: int
    thresholds: int

    def __post_init__(self) -> None:
        self.iou = np.zeros((self.regions, self.layers, self.thresholds))
        self.area = np.zeros((self.regions, self.layers, self.thresholds))
        self.hits = np.zeros(self.layers)
        self.whole = 0.0
        self.count = 0


def search_defaults(
    model: LoadedModel,
    dataset: AnnotatedSet,
    *,
    method: str = "",
    normalization: str = "",
    regions: Sequence[str] = ("all",),
    layers: Sequence[str] = (),
    thresholds: Sequence[float] = (),
    batch_size: int = 16,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    is_active: Callable[[], bool] = lambda: True,
) -> Iterator[Progress | SearchOutcome]:
    """Yield a :class:`Progress` per batch, then one :class:`SearchOutcome` per region, in order.

    ``method`` and ``normalization`` empty = the manifest's; ``regions`` see :mod:`regions` (empty = the
    manifest's). The heatmaps do not depend on the region: each layer's maps are computed once per
    image and scored for every region.

    Raises:
        InvalidArgument: unknown method, region or layer, a threshold outside [0, 1], or no mask
            marking a defect.
    """
    bases = [resolve_options(model, ExplainOptions(method=method, normalization=normalization, region=r))
             for r in dict.fromkeys(regions or ("",))]
    base = bases[0]
    names = candidate_layers(model, base, layers)
    ts = _check_thresholds(thresholds)
    per_layer = [Resolved(base.method, name, base.threshold, base.normalization, base.region) for name in names]
    opts = ExplainOptions(method=base.method, normalization=base.normalization, region=base.region)
    sweeps = [peak_threshold_sweep if b.region == "peak" else threshold_sweep for b in bases]
    every, objective = _Tally(len(bases), len(names), len(ts)), _Tally(len(bases), len(names), len(ts))
    empty = 0
    total = len(dataset.items)
    for batch in sample_batches(dataset, batch_size, max_bytes=max_image_bytes, max_pixels=max_image_pixels):
        if not is_active():
            return
        samples, done, empty = batch.samples, batch.done, batch.empty
        if samples:
            areas = [float(s.mask.mean()) for s in samples]  # = the whole image's IoU
            in_objective = [a < OBJECTIVE_MAX_MASK_AREA for a in areas]
            for k, resolved in enumerate(per_layer):
                heats, _, _ = compute_heatmaps(model, [s.image for s in samples], resolved, opts)
                for sample, heat, counted in zip(samples, heats, in_objective, strict=True):
                    scores = [sweep(heat, sample.mask, ts) for sweep in sweeps]
                    hit = pointing_hit(heat, sample.mask)
                    for tally in (every, objective) if counted else (every,):
                        for r, (iou, area) in enumerate(scores):
                            tally.iou[r, k] += iou
                            tally.area[r, k] += area
                        tally.hits[k] += hit
            for area, counted in zip(areas, in_objective, strict=True):
                for tally in (every, objective) if counted else (every,):
                    tally.whole += area
                    tally.count += 1
        yield Progress(model.manifest.name, model.manifest.version, done, total)
    if every.count == 0:
        raise InvalidArgument(f"all {total} masks mark no defect: nothing to search on")
    for r, region_base in enumerate(bases):
        yield _outcome(names, ts, every, objective, r, region_base, empty, dataset.without_mask)


def _outcome(names: list[str], ts: list[float], every: _Tally, objective: _Tally, r: int, base: Resolved,
             empty: int, without_mask: int) -> SearchOutcome:
    """Region ``r``'s candidates and best one."""
    used = objective if objective.count else every
    n = used.count
    whole = used.whole / n
    candidates = [
        Candidate(name, ts[j], float(used.iou[r, k, j] / n - whole), float(used.iou[r, k, j] / n),
                  float(used.area[r, k, j] / n), float(used.hits[k] / n))
        for k, name in enumerate(names) for j in range(len(ts))
    ]
    best = max(candidates, key=lambda c: (c.score, -c.predicted_area))
    return SearchOutcome(best, candidates, base.method, base.normalization, base.region, every.count, n, whole,
                         empty, without_mask)
