"""Heatmap post-processing: normalise, resize to the image, threshold, encode (PNG, float16 bytes).

Maps are torch tensors ``h x w`` or ``N x h x w``; normalisation is per map.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import InvalidArgument

Normalization = Literal["max", "minmax"]


def normalize(maps: Tensor, how: Normalization = "max") -> Tensor:
    """Scale each map to ``[0, 1]``.

    ``"max"`` (the thesis): ReLU, then divide by the map's maximum. ``"minmax"``:
    ``(m - min) / (max - min)``. A map with nothing to scale (all zero after ReLU for ``"max"``,
    constant for ``"minmax"``) becomes all zeros rather than NaN.
    """
    if how not in ("max", "minmax"):
        raise InvalidArgument(f"unknown normalization {how!r}; choose 'max' or 'minmax'")
    batch = _as_batch(maps).float()
    flat = batch.reshape(batch.shape[0], -1)
    if how == "max":
        flat = torch.relu(flat)
        low = torch.zeros_like(flat[:, :1])
    else:
        low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def to_image_size(maps: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``h x w`` or ``N x h x w`` maps to ``height x width``."""
    if height <= 0 or width <= 0:
        raise InvalidArgument(f"image size must be positive, got {height}x{width}")
    batch = _as_batch(maps).float()
    resized = F.interpolate(batch[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return resized if maps.dim() == 3 else resized[0]


def threshold(maps: Tensor, t: float) -> Tensor:
    """Boolean masks: ``True`` where the (normalised) map is strictly above ``t``."""
    if not 0.0 <= t <= 1.0:
        raise InvalidArgument(f"threshold must be in [0, 1], got {t}")
    return maps > t


def overlay_png(rgb: np.ndarray, heatmap: np.ndarray | Tensor, alpha: float = 0.5) -> bytes:
    """PNG of the jet-coloured heatmap blended over ``rgb`` (``H x W x 3`` uint8).

    ``heatmap`` holds values in ``[0, 1]`` (clipped); one of another size is resized bilinearly.
    ``alpha`` is the heatmap's weight in the blend.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidArgument(f"overlay needs an H x W x 3 uint8 image, got {rgb.dtype} {rgb.shape}")
    heat = _numpy_2d(heatmap).astype(np.float32)
    height, width = rgb.shape[:2]
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    heat8 = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colour_bgr = cv2.applyColorMap(heat8, cv2.COLORMAP_JET)
    image_bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    blended = cv2.addWeighted(colour_bgr, alpha, image_bgr, 1.0 - alpha, 0.0)
    return _encode_png(blended)


def mask_png(mask: np.ndarray | Tensor) -> bytes:
    """Single-channel PNG: 255 where the mask is set, 0 elsewhere."""
    array = _numpy_2d(mask).astype(bool)
    return _encode_png(array.astype(np.uint8) * 255)


def heatmap_bytes(heatmap: np.ndarray | Tensor) -> bytes:
    """The map as little-endian float16, row-major (``h * w * 2`` bytes)."""
    return np.ascontiguousarray(_numpy_2d(heatmap), dtype="<f2").tobytes(order="C")


def heatmap_from_bytes(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`heatmap_bytes`: a ``height x width`` float32 array."""
    if len(data) != height * width * 2:
        raise InvalidArgument(f"{len(data)} bytes do not hold a {height}x{width} float16 map")
    return np.frombuffer(data, dtype="<f2").reshape(height, width).astype(np.float32)


def _as_batch(maps: Tensor) -> Tensor:
    if maps.dim() == 2:
        return maps[None]
    if maps.dim() == 3:
        return maps
    raise InvalidArgument(f"maps must be h x w or N x h x w, got shape {tuple(maps.shape)}")


def _numpy_2d(values: np.ndarray | Tensor) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise InvalidArgument(f"expected a 2-D map, got shape {array.shape}")
    return array


def _encode_png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - cv2 fails only on unsupported dtypes, excluded above
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


__all__ = [
    "heatmap_bytes",
    "heatmap_from_bytes",
    "mask_png",
    "normalize",
    "overlay_png",
    "threshold",
    "to_image_size",
]
