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

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from common.errors import InvalidArgument
from common.overlap import overlap, pointing_hit
from services.explainer.annotated import AnnotatedSet, sample_batches
from services.explainer.cam import FusedLayer, format_layers, parse_layers, resolve_layer
from services.explainer.engine import (
    ExplainOptions,
    Resolved,
    candidate_heatmaps,
    check_layer,
    method_of,
    resolve_options,
)
from services.explainer.evaluate import Progress
from services.explainer.model_store import LoadedModel
from services.explainer.regions import peak_region

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Masks covering this fraction of the image or more are left out of the objective.
OBJECTIVE_MAX_MASK_AREA = 0.5


@dataclass(frozen=True)
class Candidate:
    layer: str  # a layer spec: one layer, a fusion "a:0.25+b:0.75", or "" for the pixel methods
    threshold: float
    score: float  # mean IoU minus the whole-image baseline's mean IoU (objective images)
    mean_iou: float  # objective images
    predicted_area: float  # mean fraction of the image marked (objective images)
    pointing: float  # the map's pointing game (objective images; does not depend on the threshold)
    method: str = ""


@dataclass(frozen=True)
class SearchOutcome:
    best: Candidate
    candidates: list[Candidate]  # methods, then layer specs in the given order, thresholds ascending
    method: str  # the first method searched (each candidate names its own)
    normalization: str
    region: str
    images: int  # images scored
    objective_images: int  # those the objective averages over (masks < OBJECTIVE_MAX_MASK_AREA, else all)
    whole_image_iou: float  # the baseline subtracted in every score, over the objective images
    empty_masks: int
    without_mask: int


@dataclass(frozen=True)
class HeldOut:
    """A search on one part of the masks, its winner and the defaults scored on the other part."""

    outcomes: list[SearchOutcome]  # one per region, on the search part
    best: SearchOutcome  # the winning region's outcome (see best_outcome)
    held_out: Candidate | None  # the winner on the held-out part; None without a hold-out
    defaults_held_out: Candidate | None  # the manifest's defaults on the held-out part
    search_images: int
    held_out_images: int


def best_outcome(outcomes: Sequence[SearchOutcome]) -> SearchOutcome:
    """The outcome with the best candidate over all regions (ties: the smaller predicted area, then the
    earlier region)."""
    return max(outcomes, key=lambda o: (o.best.score, -o.best.predicted_area))


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
    for name in names:
        check_layer(model, resolved.method, name)
    return names


#: Weights tried for a fusion of two layers (the first layer's share); more layers get equal weights.
FUSION_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 0.75)


def fusion_specs(model: LoadedModel, fusions: Sequence[str]) -> list[str]:
    """Each requested fusion (``"a+b"``) as the weighted layer specs the search tries (checked)."""
    specs: list[str] = []
    for fusion in dict.fromkeys(fusions):
        layers = parse_layers(fusion)
        if len(layers) < 2:
            raise InvalidArgument(f"fusion {fusion!r} names one layer; join two or more with '+'")
        for layer in layers:
            resolve_layer(model.model, layer.name)
        if len(layers) == 2:
            a, b = layers[0].name, layers[1].name
            specs += [format_layers([FusedLayer(a, w), FusedLayer(b, round(1 - w, 6))]) for w in FUSION_WEIGHTS]
        else:
            specs.append(format_layers([FusedLayer(layer.name, 1 / len(layers)) for layer in layers]))
    return list(dict.fromkeys(specs))


def candidate_sources(model: LoadedModel, methods: Sequence[str], normalization: str, layers: Sequence[str],
                      fusions: Sequence[str]) -> list[tuple[str, str]]:
    """``(method, layer spec)`` pairs to search: per method its layers (CAM: plus the fusions; pixel
    methods: the one map without a layer). Every layer is checked before any image is read."""
    sources: list[tuple[str, str]] = []
    fused = fusion_specs(model, fusions) if fusions else []
    for name in methods:
        resolved = resolve_options(model, ExplainOptions(method=name, normalization=normalization))
        family = method_of(name).family
        if family == "pixel":
            sources.append((name, ""))
            continue
        sources += [(name, layer) for layer in candidate_layers(model, resolved, layers)]
        if family == "cam":
            sources += [(name, spec) for spec in fused]
    return sources


@dataclass
class _Tally:
    """Sums over one set of images: IoU and predicted area per region, source (method x layer spec) and
    threshold; the pointing game per source and the whole image's IoU, which do not depend on the
    region or the threshold."""

    regions: int
    sources: int
    thresholds: int

    def __post_init__(self) -> None:
        self.iou = np.zeros((self.regions, self.sources, self.thresholds))
        self.area = np.zeros((self.regions, self.sources, self.thresholds))
        self.hits = np.zeros(self.sources)
        self.whole = 0.0
        self.count = 0


def search_defaults(
    model: LoadedModel,
    dataset: AnnotatedSet,
    *,
    method: str = "",
    methods: Sequence[str] = (),
    normalization: str = "",
    regions: Sequence[str] = ("all",),
    layers: Sequence[str] = (),
    fusions: Sequence[str] = (),
    thresholds: Sequence[float] = (),
    batch_size: int = 16,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    is_active: Callable[[], bool] = lambda: True,
) -> Iterator[Progress | SearchOutcome]:
    """Yield a :class:`Progress` per batch, then one :class:`SearchOutcome` per region, in order.

    Candidates: ``method`` (empty = the manifest's) and ``methods`` × their layer specs (``layers``,
    empty = the architecture's candidates; for the CAM family also the weightings of each of
    ``fusions``, see :func:`fusion_specs`; none for the pixel methods) × ``thresholds`` × ``regions``.
    ``normalization`` empty = the manifest's. The heatmaps do not depend on the region or the
    threshold: per method and batch one pass computes every layer's maps (the CAM family records all
    layers in one forward and backward) and each region and threshold is scored from them.

    Raises:
        InvalidArgument: unknown method, region or layer, a threshold outside [0, 1], or no mask
            marking a defect.
    """
    bases = [resolve_options(model, ExplainOptions(method=method, normalization=normalization, region=r))
             for r in dict.fromkeys(regions or ("",))]
    base = bases[0]
    names = list(dict.fromkeys([base.method, *methods]))
    sources = candidate_sources(model, names, base.normalization, layers, fusions)
    ts = _check_thresholds(thresholds)
    opts = ExplainOptions(normalization=base.normalization)
    sweeps = [peak_threshold_sweep if b.region == "peak" else threshold_sweep for b in bases]
    every, objective = _Tally(len(bases), len(sources), len(ts)), _Tally(len(bases), len(sources), len(ts))
    empty = 0
    total = len(dataset.items)
    for batch in sample_batches(dataset, batch_size, max_bytes=max_image_bytes, max_pixels=max_image_pixels):
        if not is_active():
            return
        samples, done, empty = batch.samples, batch.done, batch.empty
        if samples:
            areas = [float(s.mask.mean()) for s in samples]  # = the whole image's IoU
            in_objective = [a < OBJECTIVE_MAX_MASK_AREA for a in areas]
            images = [s.image for s in samples]
            heats_of: dict[tuple[str, str], list[np.ndarray]] = {}
            for name in names:
                specs = [spec for m, spec in sources if m == name]
                for spec, heats in candidate_heatmaps(model, images, name, specs, base.normalization, opts).items():
                    heats_of[(name, spec)] = heats
            for k, source in enumerate(sources):
                for sample, heat, counted in zip(samples, heats_of[source], in_objective, strict=True):
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
        yield _outcome(sources, ts, every, objective, r, region_base, empty, dataset.without_mask)


def _outcome(sources: list[tuple[str, str]], ts: list[float], every: _Tally, objective: _Tally, r: int,
             base: Resolved, empty: int, without_mask: int) -> SearchOutcome:
    """Region ``r``'s candidates and best one."""
    used = objective if objective.count else every
    n = used.count
    whole = used.whole / n
    candidates = [
        Candidate(spec, ts[j], float(used.iou[r, k, j] / n - whole), float(used.iou[r, k, j] / n),
                  float(used.area[r, k, j] / n), float(used.hits[k] / n), name)
        for k, (name, spec) in enumerate(sources) for j in range(len(ts))
    ]
    best = max(candidates, key=lambda c: (c.score, -c.predicted_area))
    return SearchOutcome(best, candidates, base.method, base.normalization, base.region, every.count, n, whole,
                         empty, without_mask)


#: Share of the annotated images a search holds out by default.
DEFAULT_HOLDOUT = 0.5


def split_dataset(dataset: AnnotatedSet, holdout_fraction: float, seed: int) -> tuple[AnnotatedSet, AnnotatedSet]:
    """A seeded shuffle cut in two: (search part, held-out part), each in name order.

    Raises:
        InvalidArgument: a fraction outside (0, 1), or too few images to leave one on each side.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise InvalidArgument(f"holdout_fraction must be in (0, 1) (0 = no hold-out), got {holdout_fraction}")
    items = list(dataset.items)
    held = int(round(len(items) * holdout_fraction))
    if held < 1 or held > len(items) - 1:
        raise InvalidArgument(f"{len(items)} annotated images cannot be split {1 - holdout_fraction:g} / "
                              f"{holdout_fraction:g}: each side needs one")
    random.Random(seed).shuffle(items)
    search = sorted(items[held:], key=lambda i: i.name)
    held_out = sorted(items[:held], key=lambda i: i.name)
    return replace(dataset, items=search), replace(dataset, items=held_out, without_mask=0)


def search_with_holdout(
    model: LoadedModel,
    dataset: AnnotatedSet,
    *,
    holdout_fraction: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    regions: Sequence[str] = ("all",),
    **search: Any,
) -> Iterator[Progress | HeldOut]:
    """:func:`search_defaults` on one part of the masks, then the winner and the manifest's defaults
    scored with the same objective on the other part (``holdout_fraction`` of the images, a seeded
    shuffle). ``holdout_fraction=0`` searches on every image and scores nothing held out.

    Yields the searches' :class:`Progress` events, then one :class:`HeldOut`.
    """
    regions = list(dict.fromkeys(regions or ("",)))
    if holdout_fraction == 0:
        part, held = dataset, None
    else:
        part, held = split_dataset(dataset, holdout_fraction, seed)
    outcomes: list[SearchOutcome] = []
    for event in search_defaults(model, part, regions=regions, **search):
        if isinstance(event, SearchOutcome):
            outcomes.append(event)
        else:
            yield event
    if len(outcomes) != len(regions):
        return  # cancelled
    winner = best_outcome(outcomes)
    held_best = held_defaults = None
    if held is not None:
        common = {k: search[k] for k in ("normalization", "batch_size", "max_image_bytes", "max_image_pixels",
                                         "is_active") if k in search}
        best = winner.best
        pairs = [(best.method, best.layer, best.threshold, winner.region)]
        defaults = model.manifest.explanation
        resolved = resolve_options(model, ExplainOptions())
        pairs.append((resolved.method, resolved.layer, resolved.threshold, defaults.region or "all"))
        scored: list[Candidate] = []
        for name, spec, threshold, region in pairs:
            outcome = None
            only = {} if method_of(name).family == "pixel" else {"layers": [spec]}  # a fusion spec is a layer spec
            for event in search_defaults(model, held, method=name, regions=[region], thresholds=[threshold],
                                         **only, **common):
                if isinstance(event, SearchOutcome):
                    outcome = event
                else:
                    yield event
            if outcome is None:
                return
            (candidate,) = outcome.candidates
            scored.append(candidate)
        held_best, held_defaults = scored
    yield HeldOut(outcomes, winner, held_best, held_defaults, len(part.items), len(held.items) if held else 0)

