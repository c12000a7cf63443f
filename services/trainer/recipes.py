"""Named recipe presets (the one home of the trainer's default numbers) and the dataset-driven choices.

A job names a preset (``Recipe.preset``; empty = ``default``) and overrides any field; what the
job did not set comes from the preset. Two presets:

* ``default`` — for a product nobody tuned anything for. Every choice is a rule, not a number
  fitted to one dataset:

  - separate learning rates: the new head at 1e-3, the pretrained backbone at 2e-4 (a randomly
    initialised network trains everything at the head's rate). The thesis's single 2e-5 leaves the
    head near its random initialisation for many epochs: on an imbalanced set it then answers the
    majority class (issue 10: a 29 %-defective product ended at accuracy = the share of ok images);
  - warm-up (10 % of the epochs, at least a quarter and at most two) then cosine decay to zero;
  - inspection augmentation on the training split: flips, 90° turns, ±10 % brightness / contrast
    (defects keep their class under all of them; parts are photographed from a fixed camera);
  - epochs from a budget of images seen (``IMAGES_SEEN_BUDGET``), so a small dataset gets more
    passes and a large one fewer, for about the same CPU time; clamped to [3, 30];
  - the input resolution from the dataset's own image sizes (the median short side, rounded to a
    multiple of 32, in [64, 256]) and, where defect masks are known, large enough that the median
    defect spans ``MIN_DEFECT_PIXELS`` input pixels (up to 384) — see :func:`auto_image_size`;
  - class-weighted loss when the train classes are uneven (``class_balance="auto"``);
  - best-epoch restore on validation loss, with early stopping after a third of the epochs (at
    least 5) without improvement: shorter patience stops inside the warm-up on noisy small sets;
  - decision threshold chosen on validation: highest specificity at defect recall >= 0.99.

* ``thesis`` — the thesis's recipe exactly, kept for the reproduction study: Adam at 2e-5 for every
  group, weight decay 2.5e-4, 6 epochs (Luna: 50), batch 32, the architecture's input size (224 px
  for the pretrained backbones), constant lr, no augmentation, plain cross-entropy, no early
  stopping, decisions at 0.5.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.datasets.imagefolder import Sample

log = logging.getLogger(__name__)

DEFAULT_PRESET = "default"

# Every field a preset fills; an override replaces it. ``None`` means "decided from the dataset"
# (epochs, image_size, and from the epochs warmup_epochs, early_stopping_patience) or "from the
# architecture" (thesis image_size).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "epochs": None,
        "batch_size": 32,
        "lr": 2e-4,
        "head_lr": 1e-3,
        "weight_decay": 2.5e-4,
        "schedule": "cosine",
        "warmup_epochs": None,
        "early_stopping_patience": None,
        "image_size": None,
        "augment": True,
        "class_balance": "auto",
        "threshold_goal": "recall",
    },
    "thesis": {
        "epochs": 6,
        "batch_size": 32,
        "lr": 2e-5,
        "head_lr": 2e-5,
        "weight_decay": 2.5e-4,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "early_stopping_patience": 0,
        "image_size": None,
        "augment": False,
        "class_balance": "none",
        "threshold_goal": "fixed",
    },
}

# Architectures trained from scratch need more epochs (the thesis trained Luna for 50).
THESIS_EPOCHS_BY_ARCH: dict[str, int] = {"luna": 50}

# ``default`` epochs: about this many training images seen, whatever the dataset's size (casting's
# 6 000 training images: 3 epochs, which met its target in 22 min at 256 px; a product with 1 000: 20).
IMAGES_SEEN_BUDGET = 20_000
MIN_AUTO_EPOCHS = 3
MAX_AUTO_EPOCHS = 30

# ``default`` resolution. 256 is the most a 2-core CPU affords within the 30-minute budget on a
# dataset of casting's size; defects known to be small may raise it to MAX_DEFECT_IMAGE_SIZE.
MIN_AUTO_IMAGE_SIZE = 64
MAX_AUTO_IMAGE_SIZE = 256
MAX_DEFECT_IMAGE_SIZE = 384
SIZE_STEP = 32
MIN_DEFECT_PIXELS = 12  # a defect should cover a few cells of the stride-8 feature maps
SIZE_SAMPLE = 256  # image headers read to estimate the dataset's sizes
MASK_SAMPLE = 64  # defect masks read to estimate the defect scale

# Class weights are used under "auto" when the largest train class exceeds the smallest by this ratio.
UNEVEN_RATIO = 1.5


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_values(name: str) -> dict[str, Any]:
    """A copy of the preset's fields (KeyError for an unknown name; spec.py validates names first)."""
    return dict(PRESETS[name])


def auto_epochs(train_images: int) -> int:
    if train_images <= 0:
        return MIN_AUTO_EPOCHS
    return max(MIN_AUTO_EPOCHS, min(MAX_AUTO_EPOCHS, round(IMAGES_SEEN_BUDGET / train_images)))


def auto_patience(epochs: int) -> int:
    return max(5, epochs // 3)


def auto_warmup(epochs: int) -> float:
    return round(min(2.0, max(0.25, 0.1 * epochs)), 2)


def _round_size(value: float) -> int:
    return int(SIZE_STEP * max(1, round(value / SIZE_STEP)))


def _evenly(items: Sequence[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def image_short_sides(samples: Sequence[Sample], limit: int = SIZE_SAMPLE) -> list[int]:
    """Short sides of up to ``limit`` evenly spaced images (headers only; unreadable files are skipped)."""
    sides = []
    for sample in _evenly(samples, limit):
        try:
            with Image.open(sample.path) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue
    return sides


def defect_fractions(root: Path, defect_class: str, limit: int = MASK_SAMPLE) -> list[float]:
    """Size of each sampled defect mask relative to its image: sqrt(defect area) / short side.

    Reads binary masks laid out as the synthetic generator writes them
    (``root/masks/train/<defect_class>/*.png``, non-zero = defect); none there means "not known".
    """
    folder = root / "masks" / "train" / defect_class
    if not folder.is_dir():
        return []
    fractions = []
    for path in _evenly(sorted(folder.glob("*.png")), limit):
        try:
            with Image.open(path) as img:
                mask = np.asarray(img.convert("L")) > 0
        except (OSError, ValueError):
            continue
        area = int(mask.sum())
        if area:
            fractions.append(math.sqrt(area) / min(mask.shape))
    return fractions


@dataclass(frozen=True)
class SizeChoice:
    image_size: int
    median_short_side: int
    median_defect_fraction: float | None
    reason: str


def auto_image_size(train: Sequence[Sample], root: Path, defect_class: str) -> SizeChoice:
    """The ``default`` preset's input side for a dataset.

    The median short side of the training images, rounded to a multiple of 32 and kept in
    [64, 256]: upsampling small images adds CPU cost without adding detail, and more than 256 px
    costs more than a 2-core CPU affords on a dataset of a few thousand images. Where defect masks
    are known, the side is raised (up to 384, never beyond the images' own size) so that the median
    defect spans ``MIN_DEFECT_PIXELS`` input pixels.
    """
    sides = image_short_sides(train)
    median_side = int(np.median(sides)) if sides else MAX_AUTO_IMAGE_SIZE
    size = max(MIN_AUTO_IMAGE_SIZE, min(MAX_AUTO_IMAGE_SIZE, _round_size(median_side)))
    reason = f"median short side {median_side} px"
    fractions = defect_fractions(root, defect_class)
    median_fraction = float(np.median(fractions)) if fractions else None
    if median_fraction:
        needed = _round_size(math.ceil(MIN_DEFECT_PIXELS / median_fraction))
        ceiling = max(size, min(MAX_DEFECT_IMAGE_SIZE, _round_size(median_side)))
        if needed > size:
            size = min(needed, ceiling)
            reason += f"; median defect {median_fraction:.3f} of the side needs {needed} px"
    return SizeChoice(size, median_side, median_fraction, reason)


def class_weights(counts: Sequence[int], mode: str) -> list[float] | None:
    """Cross-entropy class weights ``n / (k * n_c)`` (``None`` = plain loss).

    ``auto`` weights only when the largest class exceeds the smallest by ``UNEVEN_RATIO``.
    """
    if mode == "none" or not counts or min(counts) <= 0:
        return None
    if mode == "auto" and max(counts) < UNEVEN_RATIO * min(counts):
        return None
    total, k = sum(counts), len(counts)
    return [total / (k * c) for c in counts]
