"""Batch augmentation on normalised tensors, for data held in memory.

The same transformations and parameters as :class:`common.datasets.imagefolder.Augment` (which
the file-backed dataset applies per image in numpy), done for a whole batch at once in torch:
random horizontal / vertical flips, a random multiple of 90° rotation (label-preserving for
round parts such as impellers), and brightness / contrast jitter defined on [0, 1] pixels and
applied in normalised units, clipped to the valid pixel range.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.datasets.imagefolder import Augment


class BatchAugmenter:
    def __init__(self, augment: Augment, mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment = augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.lo = -self.mean / self.std
        self.hi = (1 - self.mean) / self.std

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (N, C, S, S) batch (not modified in place); randomness only from ``generator``."""
        aug = self.augment
        n = x.shape[0]
        draws = torch.rand((n, 4), generator=generator)
        if aug.hflip:
            x = torch.where((draws[:, 0] < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        if aug.vflip:
            x = torch.where((draws[:, 1] < 0.5).view(-1, 1, 1, 1), x.flip(-2), x)
        if aug.rot90 and x.shape[-1] == x.shape[-2]:
            turns = torch.randint(0, 4, (n,), generator=generator)
            out = x.clone()
            for k in (1, 2, 3):
                sel = turns == k
                if bool(sel.any()):
                    out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
            x = out
        if aug.brightness > 0 or aug.contrast > 0:
            c = (1 - aug.contrast + 2 * aug.contrast * draws[:, 2]).view(-1, 1, 1, 1)
            b = (-aug.brightness + 2 * aug.brightness * draws[:, 3]).view(-1, 1, 1, 1)
            offset = (c * (self.mean - 0.5) + 0.5 + b - self.mean) / self.std
            x = torch.maximum(torch.minimum(x * c + offset, self.hi), self.lo)
        return x
