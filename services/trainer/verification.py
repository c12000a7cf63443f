"""Build the verification set a fit publishes (format and use: :mod:`common.verification`).

The images are validation images (never test images: the set travels with the model and is used to
accept backends, not to report quality), chosen class-balanced so that the defects are in it even when
they are rare, capped in count and bytes so the file stays small beside the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from common.verification import VerificationSet, pixels_from_inputs, softmax
from services.trainer.data import BatchSource

DEFAULT_MAX_IMAGES = 256
DEFAULT_MAX_BYTES = 48 * 1024 * 1024  # of uint8 pixels: 256 images up to 250 px, fewer beyond
_BATCH = 32


def allocate(available: Sequence[int], cap: int) -> list[int]:
    """Images to take per class: as equal as the classes allow, ``min(cap, sum(available))`` in all."""
    take = [0] * len(available)
    left = min(cap, sum(available))
    while left > 0:
        open_classes = [i for i, n in enumerate(available) if take[i] < n]
        share = max(1, left // len(open_classes))
        for i in open_classes:
            add = min(share, available[i] - take[i], left)
            take[i] += add
            left -= add
            if left == 0:
                break
    return take


def build_verification_set(
    model: nn.Module,
    source: BatchSource,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> VerificationSet:
    """Class-balanced validation images of ``source`` with ``model``'s torch fp32 CPU probabilities.

    ``model`` is not modified (the reference runs on a CPU fp32 copy, whatever device and autocast
    the fit used).
    """
    kept: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    cap = 0
    for x, y in source.batches(0, False):
        if not cap:  # first batch: the image size is known now
            cap = max(1, min(max_images, max_bytes // (x.shape[2] * x.shape[3] * 3)))
        pixels = pixels_from_inputs(x.float().cpu().numpy(), mean, std)
        for image, label in zip(pixels, y.tolist(), strict=True):
            if len(kept[label]) < cap:
                kept[label].append(image)
        if all(len(k) >= cap for k in kept):
            break
    take = allocate([len(k) for k in kept], cap)
    pixels = np.stack([img for k, n in zip(kept, take, strict=True) for img in k[:n]])
    labels = np.concatenate([np.full(n, c, np.int64) for c, n in enumerate(take)])
    placeholder = np.zeros((len(labels), num_classes), np.float32)
    inputs = VerificationSet(pixels, labels, placeholder).inputs(mean, std)
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(inputs), _BATCH):
            logits.append(reference(torch.from_numpy(inputs[start:start + _BATCH])).float().numpy())
    probabilities = softmax(np.concatenate(logits)).astype(np.float32)
    return VerificationSet(pixels, labels, probabilities)
