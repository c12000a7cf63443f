"""Overlap between a thresholded heatmap P and a defect mask G, per image and over a set.

Per image: ``IoU = |P∩G| / |P∪G|``, ``IoP = |P∩G| / |P|``, ``IoGT = |P∩G| / |G|``, the pointing game
(is the heatmap's maximum inside G) and the area fractions of P and G.

Conventions:

* ``|P| = 0`` (nothing above the threshold): ``IoP = 0`` and ``IoU = 0``, i.e. an empty prediction
  scores as a miss, never as undefined; ``IoGT`` is 0 as well.
* ``|G| = 0`` is rejected (:class:`InvalidArgument`): overlap with no defect means nothing, and
  :func:`common.masks.load_mask` never returns such a mask.
* Pointing game: the maximum is ``numpy.argmax`` of the heatmap (the first maximum in row-major
  order); a constant heatmap points nowhere and counts as a miss.

Threshold-free scores of the heatmap H itself (given with it), which no choice of threshold or
region can game, each with its chance level:

* **energy** (energy-based pointing game): ``sum(H * G) / sum(H)``, the share of the map's mass inside
  G; a map spread evenly scores the mask area (its chance level); an all-zero map scores 0.
* **pixel AUC**: the ROC AUC of H as a per-pixel classifier of G (ties count half); chance 0.5, and
  0.5 as well when G covers the whole image (no negative pixel).
* **best F1**: the highest F1 (Dice) of ``H > t`` against G over every threshold t, and that t;
  marking the whole image scores ``2a / (1 + a)`` (a = the mask area), its chance level.

Over a set, :class:`OverlapAccumulator` reports the mean of the per-image scores and the pooled
scores (sums of intersections, unions and areas over the set, then one ratio: the thesis summed),
which weight large defects more. Every score comes with trivial baselines on the same masks: the
whole image marked, a centred disc whose area is the mean mask area fraction, and the pointing
game's chance level (the mean mask area fraction) beside pointing at the image centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from common.errors import InvalidArgument


@dataclass(frozen=True)
class OverlapScores:
    """Scores of one image, with the counts that pooling sums."""

    iou: float
    iop: float
    iogt: float
    pointing: bool | None  # None when no heatmap was given
    pred_area: float  # |P| / pixels
    mask_area: float  # |G| / pixels
    intersection: int
    union: int
    pred_pixels: int
    mask_pixels: int
    pixels: int
    energy: float | None = None  # None when no heatmap was given (as for the three below)
    pixel_auc: float | None = None
    best_f1: float | None = None
    best_f1_threshold: float | None = None

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


def overlap(pred: np.ndarray, gt: np.ndarray, heatmap: np.ndarray | None = None) -> OverlapScores:
    """Scores of one thresholded heatmap ``pred`` against the defect mask ``gt`` (both ``H x W``)."""
    pred = _bool_2d(pred, "prediction")
    gt = _bool_2d(gt, "defect mask")
    if pred.shape != gt.shape:
        raise InvalidArgument(f"prediction {pred.shape} and defect mask {gt.shape} differ in size")
    mask_pixels = int(gt.sum())
    if mask_pixels == 0:
        raise InvalidArgument("defect mask marks no pixel: overlap is undefined")
    pred_pixels = int(pred.sum())
    intersection = int(np.logical_and(pred, gt).sum())
    union = pred_pixels + mask_pixels - intersection
    pixels = gt.size
    free = threshold_free(heatmap, gt) if heatmap is not None else (None, None, None, None)
    return OverlapScores(
        iou=intersection / union,
        iop=intersection / pred_pixels if pred_pixels else 0.0,
        iogt=intersection / mask_pixels,
        pointing=None if heatmap is None else pointing_hit(heatmap, gt),
        pred_area=pred_pixels / pixels,
        mask_area=mask_pixels / pixels,
        intersection=intersection,
        union=union,
        pred_pixels=pred_pixels,
        mask_pixels=mask_pixels,
        pixels=pixels,
        energy=free[0],
        pixel_auc=free[1],
        best_f1=free[2],
        best_f1_threshold=free[3],
    )


def threshold_free(heatmap: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """``(energy, pixel AUC, best F1, best-F1 threshold)`` of ``heatmap`` against ``gt`` (see the module)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    if heat.shape != gt.shape:
        raise InvalidArgument(f"heatmap {heat.shape} and defect mask {gt.shape} differ in size")
    if not np.isfinite(heat).all():
        raise InvalidArgument("heatmap has non-finite values")
    flat, inside = heat.ravel(), gt.ravel()
    positives = int(inside.sum())
    if positives == 0:
        raise InvalidArgument("defect mask marks no pixel: overlap is undefined")
    mass = float(np.clip(flat, 0, None).sum())
    energy = float(np.clip(flat[inside], 0, None).sum() / mass) if mass > 0 else 0.0
    values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)  # ascending
    positives_at = np.bincount(inverse, weights=inside, minlength=values.size)
    negatives = flat.size - positives
    if negatives:
        # Mann-Whitney: each positive beats the negatives below it and ties with those at its value.
        negatives_at = counts - positives_at
        below = np.concatenate([[0.0], np.cumsum(negatives_at)[:-1]])
        auc = float((positives_at * (below + 0.5 * negatives_at)).sum() / (positives * negatives))
    else:
        auc = 0.5
    # Predicting every pixel at or above values[j] (= strictly above values[j - 1]), j descending.
    tp = np.cumsum(positives_at[::-1])[::-1]
    predicted = np.cumsum(counts[::-1])[::-1]
    f1 = 2 * tp / (predicted + positives)
    best = int(np.argmax(f1[::-1]))  # the first maximum from the top: the smallest such set
    j = values.size - 1 - best
    threshold = float(values[j - 1]) if j > 0 else 0.0
    return energy, auc, float(f1[j]), threshold


def pointing_hit(heatmap: np.ndarray, gt: np.ndarray) -> bool:
    """Whether the heatmap's maximum (first in row-major order) lies in ``gt``; constant maps miss."""
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.shape != gt.shape:
        raise InvalidArgument(f"heatmap {heat.shape} and defect mask {gt.shape} differ in size")
    if heat.size == 0 or not np.isfinite(heat).all() or heat.max() == heat.min():
        return False
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(gt[row, col])


def centred_disc(height: int, width: int, area_fraction: float) -> np.ndarray:
    """A disc centred in the image covering about ``area_fraction`` of it (pixel centres inside)."""
    radius = np.sqrt(max(area_fraction, 0.0) * height * width / np.pi)
    rows = np.arange(height)[:, None] + 0.5 - height / 2
    cols = np.arange(width)[None, :] + 0.5 - width / 2
    return rows**2 + cols**2 <= radius**2


@dataclass(frozen=True)
class SetScores:
    """Mean-over-images and pooled scores of a set of (prediction, mask) pairs."""

    count: int
    mean_iou: float
    mean_iop: float
    mean_iogt: float
    pooled_iou: float
    pooled_iop: float
    pooled_iogt: float
    mean_pred_area: float
    mean_mask_area: float
    pointing_rate: float | None  # over the images that had a heatmap; None if none had
    mean_energy: float | None = None  # threshold-free scores over the same images; None without heatmaps
    mean_pixel_auc: float | None = None
    mean_best_f1: float | None = None


@dataclass(frozen=True)
class OverlapSummary:
    """The scores of a set beside trivial baselines on the same masks."""

    scores: SetScores
    whole_image: SetScores
    centred_disc: SetScores
    pointing_chance: float  # mean mask area fraction: a uniformly random point's hit rate
    pointing_centre: float  # rate at which the image centre lies in the defect
    energy_chance: float = 0.0  # mean mask area: an evenly spread map's energy
    pixel_auc_chance: float = 0.5
    best_f1_chance: float = 0.0  # mean F1 of the whole image marked, 2a / (1 + a)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class OverlapAccumulator:
    """Adds images one at a time; :meth:`summary` gives means, pooled scores and baselines.

    The defect masks are kept bit-packed (an eighth of a byte per pixel) for the disc baseline,
    whose area is known only once the whole set has been seen.
    """

    per_image: list[OverlapScores] = field(default_factory=list)
    _masks: list[tuple[tuple[int, int], np.ndarray]] = field(default_factory=list, repr=False)

    def add(self, pred: np.ndarray, gt: np.ndarray, heatmap: np.ndarray | None = None) -> OverlapScores:
        scores = overlap(pred, gt, heatmap)
        gt = np.asarray(gt, dtype=bool)
        self.per_image.append(scores)
        self._masks.append((gt.shape, np.packbits(gt, axis=None)))
        return scores

    def __len__(self) -> int:
        return len(self.per_image)

    def summary(self) -> OverlapSummary:
        if not self.per_image:
            raise InvalidArgument("no images to summarise")
        masks = [self._unpack(i) for i in range(len(self._masks))]
        mean_area = float(np.mean([s.mask_area for s in self.per_image]))
        whole = [overlap(np.ones_like(m), m) for m in masks]
        discs = [overlap(centred_disc(*m.shape, mean_area), m) for m in masks]
        centre_hits = [bool(m[m.shape[0] // 2, m.shape[1] // 2]) for m in masks]
        return OverlapSummary(
            scores=aggregate(self.per_image),
            whole_image=aggregate(whole),
            centred_disc=aggregate(discs),
            pointing_chance=mean_area,
            pointing_centre=float(np.mean(centre_hits)),
            energy_chance=mean_area,
            best_f1_chance=float(np.mean([2 * s.mask_area / (1 + s.mask_area) for s in self.per_image])),
        )

    def _unpack(self, index: int) -> np.ndarray:
        shape, packed = self._masks[index]
        return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def aggregate(scores: list[OverlapScores]) -> SetScores:
    """Means over images and pooled ratios (sums over images); pooled IoP is 0 when no pixel was predicted."""
    if not scores:
        raise InvalidArgument("no images to aggregate")
    inter = sum(s.intersection for s in scores)
    union = sum(s.union for s in scores)
    pred = sum(s.pred_pixels for s in scores)
    mask = sum(s.mask_pixels for s in scores)
    pointed = [s.pointing for s in scores if s.pointing is not None]
    free = [s for s in scores if s.energy is not None]
    return SetScores(
        count=len(scores),
        mean_iou=float(np.mean([s.iou for s in scores])),
        mean_iop=float(np.mean([s.iop for s in scores])),
        mean_iogt=float(np.mean([s.iogt for s in scores])),
        pooled_iou=inter / union,
        pooled_iop=inter / pred if pred else 0.0,
        pooled_iogt=inter / mask,
        mean_pred_area=float(np.mean([s.pred_area for s in scores])),
        mean_mask_area=float(np.mean([s.mask_area for s in scores])),
        pointing_rate=float(np.mean(pointed)) if pointed else None,
        mean_energy=float(np.mean([s.energy for s in free])) if free else None,
        mean_pixel_auc=float(np.mean([s.pixel_auc for s in free])) if free else None,
        mean_best_f1=float(np.mean([s.best_f1 for s in free])) if free else None,
    )


def _bool_2d(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise InvalidArgument(f"{what} must be 2-D, got shape {array.shape}")
    return array.astype(bool, copy=False)


__all__ = [
    "OverlapAccumulator",
    "OverlapScores",
    "OverlapSummary",
    "SetScores",
    "aggregate",
    "centred_disc",
    "overlap",
    "pointing_hit",
    "threshold_free",
]
