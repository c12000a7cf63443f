"""The worst explanations of an evaluation, kept as small pictures for the HTML report.

Per model and mask-size bucket only the ``per_bucket`` images with the lowest IoU are kept (a bounded
heap), as thumbnails: the image, the heatmap over it, the defect mask, and the thresholded prediction
coloured against the mask (green: predicted and defect, red: predicted only, blue: missed defect).
Everything else about an image is already in the per-image CSV.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from services.explainer.engine import Explanation

THUMB_SIDE = 192
TILES = ("image", "heatmap", "defect mask", "prediction vs mask")
_HIT, _FALSE_ALARM, _MISSED = (40, 170, 60), (220, 50, 40), (40, 90, 230)  # RGB


@dataclass(frozen=True)
class GalleryEntry:
    model: str
    image: str  # name relative to the images folder
    bucket: str
    scores: dict[str, float | bool]  # the score fields of the image's result (whatever they are)
    predicted_class: str
    probability: float
    tiles: tuple[str, ...]  # data: URIs, in TILES order

    @property
    def iou(self) -> float:
        return float(self.scores.get("iou", 0.0))


def _thumb_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, THUMB_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _data_uri(rgb: np.ndarray, fmt: str = ".png") -> str:
    ok, encoded = cv2.imencode(fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - uint8 RGB always encodes
        raise RuntimeError("thumbnail encoding failed")
    mime = "image/png" if fmt == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def tiles(image: np.ndarray, heatmap: np.ndarray, defect: np.ndarray, predicted: np.ndarray) -> tuple[str, ...]:
    """The four thumbnails of one image as data: URIs (``image`` RGB uint8; maps at the image's size)."""
    size = _thumb_size(*image.shape[:2])
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    heat = cv2.resize(np.clip(heatmap, 0, 1).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    coloured = cv2.cvtColor(cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET),
                            cv2.COLOR_BGR2RGB)
    overlay = cv2.addWeighted(coloured, 0.5, small, 0.5, 0.0)
    gt = cv2.resize(defect.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    pred = cv2.resize(predicted.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    mask_tile = np.where(gt[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
    grey = cv2.cvtColor(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB) // 2
    agreement = grey.copy()
    agreement[pred & gt] = _HIT
    agreement[pred & ~gt] = _FALSE_ALARM
    agreement[~pred & gt] = _MISSED
    return (_data_uri(small, ".jpg"), _data_uri(overlay, ".jpg"), _data_uri(mask_tile), _data_uri(agreement))


def score_fields(scores: object) -> dict[str, float | bool]:
    """The per-image scores a result carries: its float and bool fields (pixel counts left out)."""
    values = dataclasses.asdict(scores) if dataclasses.is_dataclass(scores) else dict(vars(scores))
    return {k: v for k, v in values.items() if isinstance(v, bool | float)}


@dataclass
class Gallery:
    """Keeps the worst ``per_bucket`` images (lowest IoU) per model and size bucket."""

    per_bucket: int = 8
    _heaps: dict[tuple[str, str], list[tuple[float, int, GalleryEntry]]] = field(default_factory=dict)
    _order: itertools.count = field(default_factory=itertools.count)

    def offer(self, model: str, image_name: str, bucket: str, image: np.ndarray, defect: np.ndarray,
              explanation: Explanation) -> None:
        """Consider one explained image; thumbnails are made only when it is among the worst so far."""
        scores = score_fields(explanation.scores)
        iou = float(scores.get("iou", 0.0))
        heap = self._heaps.setdefault((model, bucket), [])
        if len(heap) >= self.per_bucket and -heap[0][0] <= iou:
            return
        entry = GalleryEntry(model, image_name, bucket, scores, explanation.predicted_class,
                             float(explanation.probability),
                             tiles(image, explanation.heatmap, defect, explanation.mask))
        item = (-iou, next(self._order), entry)
        if len(heap) < self.per_bucket:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def entries(self) -> list[GalleryEntry]:
        """All kept images, worst first (ties: the order they were seen)."""
        kept = [(-neg, order, e) for heap in self._heaps.values() for neg, order, e in heap]
        return [e for _, _, e in sorted(kept, key=lambda t: (t[0], t[1]))]
