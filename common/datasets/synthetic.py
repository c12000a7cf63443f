"""Seeded synthetic castings: impeller-like parts with defects drawn at known places.

Each image is a grayscale top view of a part (a bright disc with a hub hole, radial blade shading,
a lighting gradient, texture noise, random rotation and brightness) on a dark background. Defect
images carry one or two kinds of defect, each with an exact binary mask:

* ``pit``: small dark blobs on the part;
* ``crack``: a thin dark polyline on the part;
* ``chip``: a bite taken out of the rim (those pixels become background).

Ok and defect images share one distribution of everything else, so the only class signal is the
defect itself. Images are generated from per-image seeds, so image ``i`` of a split does not depend
on how many images the split has.

Harder products (:class:`Hardness`): smaller defects (``defect_scale``), uneven classes
(``defect_share``, e.g. 5 % defective), images of varied size and aspect ratio (the part on a wider
or taller background), and three-channel (tinted) instead of grayscale files.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.images import encode_png

DEFECT_KINDS = ("pit", "crack", "chip")
CLASSES = ("def_front", "ok_front")  # sorted, as ImageFolder discovery will order them
SPLITS = ("train", "test")


class _Part:
    """Geometry of one rendered part (pixel units)."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = size
        self.cx = size / 2 + rng.uniform(-0.03, 0.03) * size
        self.cy = size / 2 + rng.uniform(-0.03, 0.03) * size
        self.radius = rng.uniform(0.38, 0.44) * size
        self.hub = rng.uniform(0.10, 0.13) * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.dx = xx + 0.5 - self.cx
        self.dy = yy + 0.5 - self.cy
        self.r = np.hypot(self.dx, self.dy)
        self.theta = np.arctan2(self.dy, self.dx)
        self.disc = (self.r <= self.radius) & (self.r >= self.hub)

    def polar(self, radius: float, angle: float) -> tuple[float, float]:
        return self.cx + radius * np.cos(angle), self.cy + radius * np.sin(angle)


def _shade(rng: np.random.Generator, part: _Part) -> tuple[np.ndarray, np.ndarray]:
    """Return (part intensity, background intensity) images in [0, 1] before defects and noise."""
    size = part.size
    blades = int(rng.integers(6, 10))
    phase = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(0.55, 0.68)
    light_angle = rng.uniform(0, 2 * np.pi)
    light = (np.cos(light_angle) * part.dx + np.sin(light_angle) * part.dy) / part.radius
    rel = np.clip((part.r - part.hub) / (part.radius - part.hub), 0.0, 1.0)
    blade = 0.07 * np.cos(blades * (part.theta - phase) + 2.0 * rel) * np.sin(np.pi * rel)
    boss = 0.07 * (part.r < part.hub * 1.7)  # raised ring around the hub
    rim = -0.06 * (part.r > part.radius * 0.92)  # chamfer at the outer edge
    fg = base + blade + boss + rim + 0.05 * light
    bg_level = rng.uniform(0.10, 0.18)
    bg = bg_level + 0.03 * light + np.zeros((size, size), np.float32)
    return fg.astype(np.float32), bg.astype(np.float32)


def _pits(rng: np.random.Generator, part: _Part, allowed: np.ndarray, scale: float = 1.0) -> np.ndarray:
    size = part.size
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        rad = rng.uniform(part.hub + 0.15 * part.radius, 0.85 * part.radius)
        x, y = part.polar(rad, rng.uniform(0, 2 * np.pi))
        axes = (max(1, round(rng.uniform(0.04, 0.065) * size * scale)),
                max(1, round(rng.uniform(0.04, 0.065) * size * scale)))
        cv2.ellipse(mask, (round(x), round(y)), axes, rng.uniform(0, 180), 0, 360, 1, thickness=-1)
    return mask.astype(bool) & allowed


def _crack(rng: np.random.Generator, part: _Part, allowed: np.ndarray, scale: float = 1.0) -> np.ndarray:
    size = part.size
    mask = np.zeros((size, size), np.uint8)
    rad = rng.uniform(part.hub + 0.15 * part.radius, 0.8 * part.radius)
    x, y = part.polar(rad, rng.uniform(0, 2 * np.pi))
    heading = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(3, 6))):
        heading += rng.normal(0.0, 0.5)
        step = rng.uniform(0.07, 0.12) * size * scale
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        points.append((x, y))
    pts = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(mask, [pts], isClosed=False, color=1, thickness=max(1, round(size * scale / 40)))
    return mask.astype(bool) & allowed


def _chip(rng: np.random.Generator, part: _Part, scale: float = 1.0) -> np.ndarray:
    x, y = part.polar(part.radius * rng.uniform(0.97, 1.05), rng.uniform(0, 2 * np.pi))
    bite = max(1.5, rng.uniform(0.10, 0.15) * part.size * scale)
    return (np.hypot(part.dx + part.cx - x, part.dy + part.cy - y) <= bite) & part.disc


_MAX_TRIES = 20


def render_part(rng: np.random.Generator, size: int, defect_kinds: Sequence[str] = (),
                defect_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Render one part with the given defects.

    Args:
        rng: the only source of randomness (three child streams are spawned from it).
        size: the image is size × size pixels.
        defect_kinds: any of ``DEFECT_KINDS``; empty for a good part. Each kind yields a non-empty
            mask region.
        defect_scale: multiplies the defects' sizes (0.3: defects a third of the usual size).

    Returns:
        (image, mask): a uint8 (size, size) grayscale image and a bool (size, size) mask that is
        True exactly on the pixels a defect changed.
    """
    unknown = set(defect_kinds) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"unknown defect kinds {sorted(unknown)}; known: {DEFECT_KINDS}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    # Independent streams: the part and its noise do not depend on which defects are drawn, so the
    # same rng state with and without defects gives images that differ exactly on the mask.
    shape_rng, defect_rng, noise_rng = rng.spawn(3)
    part = _Part(shape_rng, size)
    fg, bg = _shade(shape_rng, part)
    img = np.where(part.disc, fg, bg)
    mask = np.zeros((size, size), bool)
    solid = part.disc.copy()
    if "chip" in defect_kinds:
        chip = _chip(defect_rng, part, defect_scale)
        img[chip] = bg[chip]
        mask |= chip
        solid &= ~chip
    for kind in ("pit", "crack"):
        if kind not in defect_kinds:
            continue
        draw = _pits if kind == "pit" else _crack
        for _ in range(_MAX_TRIES):
            region = draw(defect_rng, part, solid, defect_scale)
            if region.any():
                break
        dark = defect_rng.uniform(0.12, 0.22)
        img[region] = dark
        mask |= region
    texture = cv2.GaussianBlur(noise_rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), size / 40)
    texture *= 0.04 / max(float(texture.std()), 1e-6)
    img = img + texture * solid + noise_rng.normal(0.0, 0.02, (size, size)).astype(np.float32)
    img *= noise_rng.uniform(0.85, 1.15)
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return out, mask


def _image_rng(seed: int, split: int, cls: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, cls, index])


@dataclass(frozen=True)
class Hardness:
    """What makes a generated product harder than the balanced, square, grayscale default.

    Attributes:
        defect_scale: multiplies every defect's size.
        defect_share: fraction of defective images per split (None: as many as ok images); the
            split keeps ``2 x per_class`` images, at least one of them defective.
        aspect_range: each image's width / height is drawn from this range; the part keeps the
            short side and sits at a random place on background that fills the long side.
        size_jitter: each image's short side is drawn from [size x (1 - j), size x (1 + j)].
        channels: 1 (grayscale files) or 3 (tinted colour files of the same content).
    """

    defect_scale: float = 1.0
    defect_share: float | None = None
    aspect_range: tuple[float, float] = (1.0, 1.0)
    size_jitter: float = 0.0
    channels: int = 1

    def __post_init__(self) -> None:
        if not 0.05 <= self.defect_scale <= 3.0:
            raise ValueError(f"defect_scale must be in [0.05, 3], got {self.defect_scale}")
        if self.defect_share is not None and not 0.0 < self.defect_share < 1.0:
            raise ValueError(f"defect_share must be in (0, 1), got {self.defect_share}")
        lo, hi = self.aspect_range
        if not 0.2 <= lo <= hi <= 5.0:
            raise ValueError(f"aspect_range must satisfy 0.2 <= lo <= hi <= 5, got {self.aspect_range}")
        if not 0.0 <= self.size_jitter < 0.9:
            raise ValueError(f"size_jitter must be in [0, 0.9), got {self.size_jitter}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def counts(self, per_class: int) -> dict[str, int]:
        """Images per class of one split."""
        if self.defect_share is None:
            return {"def_front": per_class, "ok_front": per_class}
        total = 2 * per_class
        defects = max(1, round(total * self.defect_share))
        return {"def_front": defects, "ok_front": total - defects}


def _framed(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, hard: Hardness,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Place a square render on a background of the drawn aspect ratio (the part keeps its size)."""
    lo, hi = hard.aspect_range
    if lo == hi == 1.0:
        return image, mask
    aspect = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    side = image.shape[0]
    w, h = (round(side * aspect), side) if aspect >= 1 else (side, round(side / aspect))
    corner = np.concatenate([image[:4, :4].ravel(), image[-4:, -4:].ravel()]).astype(np.float32)
    canvas = rng.normal(float(corner.mean()), max(1.0, float(corner.std())), (h, w))
    canvas = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    framed_mask = np.zeros((h, w), bool)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    canvas[y0:y0 + side, x0:x0 + side] = image
    framed_mask[y0:y0 + side, x0:x0 + side] = mask
    return canvas, framed_mask


def _tinted(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    gains = rng.uniform(0.85, 1.0, 3)
    return np.clip(np.round(image[:, :, None].astype(np.float32) * gains), 0, 255).astype(np.uint8)


def generate_dataset(
    root: Path,
    *,
    train_per_class: int = 24,
    test_per_class: int = 8,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    hardness: Hardness | None = None,
) -> Path:
    """Write a synthetic ImageFolder dataset and its defect masks; return ``root``.

    Layout::

        root/{train,test}/{def_front,ok_front}/<stem>.png      grayscale parts
        root/masks/{train,test}/def_front/<stem>.png           binary masks, 255 = defect

    ``hardness`` (default: none) makes the product harder; see :class:`Hardness`.

    Raises:
        FileExistsError: ``root`` already holds ``train/``, ``test/`` or ``masks/`` and ``overwrite``
            is False (a mix of two generations would be a silently different dataset). With
            ``overwrite=True`` those three folders are deleted first; nothing else is touched.
    """
    hard = hardness or Hardness()
    root = Path(root)
    owned = [root / name for name in (*SPLITS, "masks")]
    existing = [p for p in owned if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {[p.name for p in existing]}; pass overwrite=True")
    for path in existing:
        shutil.rmtree(path)
    per_class = {"train": train_per_class, "test": test_per_class}
    for split_idx, split in enumerate(SPLITS):
        counts = hard.counts(per_class[split])
        for cls_idx, cls in enumerate(CLASSES):
            img_dir = root / split / cls
            img_dir.mkdir(parents=True, exist_ok=True)
            mask_dir = root / "masks" / split / cls
            if cls == "def_front":
                mask_dir.mkdir(parents=True, exist_ok=True)
            prefix = cls.split("_")[0]
            for i in range(counts[cls]):
                rng = _image_rng(seed, split_idx, cls_idx, i)
                kinds: tuple[str, ...] = ()
                if cls == "def_front":
                    picked = rng.choice(len(DEFECT_KINDS), size=int(rng.integers(1, 3)), replace=False)
                    kinds = tuple(DEFECT_KINDS[k] for k in sorted(picked))
                side = size
                if hard.size_jitter:
                    side = max(16, round(size * rng.uniform(1 - hard.size_jitter, 1 + hard.size_jitter)))
                image, mask = render_part(rng, side, kinds, hard.defect_scale)
                image, mask = _framed(rng, image, mask, hard)
                stem = f"{prefix}_{i:04d}"
                pixels = _tinted(rng, image) if hard.channels == 3 else image
                (img_dir / f"{stem}.png").write_bytes(encode_png(pixels))
                if cls == "def_front":
                    (mask_dir / f"{stem}.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    return root
