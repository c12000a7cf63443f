"""Each data-parallel rank's part of every batch (see ``services.trainer.distributed``).

Every rank draws the same seeded shuffle as a single process would; global batch ``i`` holds the images a
single process with batch ``world × batch_size`` would train on, cut into ``world`` contiguous chunks,
one per rank (``torch.tensor_split``: sizes differ by at most one). Every rank gets the same number
of chunks, also in evaluation (a chunk may then be empty), so per-batch collectives stay in step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from services.trainer.data import Batch, BatchSource, InMemorySource, LoaderSource, epoch_seed


def plan_batches(samples: int, batch_size: int, rank: int, world: int, train: bool,
                 order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Sample indices of ``rank``'s chunk of every global batch of ``world × batch_size`` samples.

    Train: global batch ``i`` is ``order[i·B:(i+1)·B]``. A last partial batch is kept when every rank
    gets at least two images (BatchNorm cannot train on one); with one rank that is the single-process
    rule. Eval: consecutive global batches, every sample exactly once.
    """
    total = batch_size * world
    order = torch.arange(samples) if order is None else order
    return [torch.tensor_split(order[i * total:(i + 1) * total], world)[rank]
            for i in range(sharded_batches(samples, batch_size, world, train))]


def sharded_batches(samples: int, batch_size: int, world: int, train: bool) -> int:
    """Steps of one pass, the same on every rank."""
    full, rest = divmod(samples, batch_size * world)
    return full + (1 if (rest >= 2 * world if train else rest > 0) else 0)


def train_order(samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The single-process shuffle of an epoch of an :class:`InMemorySource`."""
    return torch.randperm(samples, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def loader_order(samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The single-process shuffle of an epoch of a :class:`LoaderSource`.

    Its DataLoader draws a base seed from the generator before the sampler's permutation, so the order
    is read from a DataLoader built the same way (over indices) instead of re-deriving its internals.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    indices = DataLoader(range(samples), batch_size=None, shuffle=True, generator=generator)
    return torch.tensor([int(i) for i in indices], dtype=torch.int64)


def _empty_batch(image_size: int) -> Batch:
    return torch.empty((0, 3, image_size, image_size)), torch.empty((0,), dtype=torch.int64)


class ShardedMemorySource:
    """A rank's part of an :class:`InMemorySource`.

    Augmentation draws from a generator seeded per (seed, epoch, rank): deterministic, so a resumed run
    sees the same batches, but not the single process's draws.
    """

    def __init__(self, source: InMemorySource, rank: int, world: int) -> None:
        self.source = source
        self.rank = rank
        self.world = world
        self.samples = source.samples

    def num_batches(self, train: bool) -> int:
        return sharded_batches(self.samples, self.source.batch_size, self.world, train)

    def batches(self, epoch: int, train: bool) -> Iterator[Batch]:
        src = self.source
        order = train_order(src.samples, src.seed, epoch) if train else None
        augment_seed = int(np.random.SeedSequence([src.seed, epoch, 1, self.rank]).generate_state(1, np.uint64)[0] >> 1)
        augment_gen = torch.Generator().manual_seed(augment_seed)
        for idx in plan_batches(src.samples, src.batch_size, self.rank, self.world, train, order):
            x = src.images[idx]
            if train and src.augmenter is not None and len(idx):
                x = src.augmenter(x, augment_gen)
            yield x, src.labels[idx]

    def unreadable(self) -> int:
        return self.source.unreadable()


class ShardedLoaderSource:
    """A rank's part of a :class:`LoaderSource`: a DataLoader over this rank's chunks only.

    Images are augmented per (seed, epoch, index), so the ranks' chunks together are exactly the
    single-process batch. Empty (or entirely unreadable) chunks are yielded as empty batches: the ranks
    take every step together. Unreadable images are counted by the rank that met them.
    """

    def __init__(self, source: LoaderSource, rank: int, world: int) -> None:
        self.source = source
        self.rank = rank
        self.world = world
        self.samples = source.samples
        self._first_pass_unreadable: int | None = None

    def num_batches(self, train: bool) -> int:
        return sharded_batches(self.samples, self.source.batch_size, self.world, train)

    def batches(self, epoch: int, train: bool) -> Iterator[Batch]:
        src, dataset = self.source, self.source.dataset
        dataset.set_epoch(epoch)
        before = dataset.unreadable_count
        order = loader_order(src.samples, src.seed, epoch) if train else None
        plan = [idx.tolist() for idx in plan_batches(src.samples, src.batch_size, self.rank, self.world, train, order)]
        loader = DataLoader(dataset, batch_sampler=[chunk for chunk in plan if chunk], num_workers=src.workers,
                            collate_fn=dataset.collate, persistent_workers=False)
        loaded = iter(loader)
        for chunk in plan:
            yield next(loaded) if chunk else _empty_batch(dataset.image_size)
        if self._first_pass_unreadable is None:
            self._first_pass_unreadable = dataset.unreadable_count - before

    def unreadable(self) -> int:
        return self._first_pass_unreadable or 0


def shard_source(source: BatchSource, rank: int, world: int) -> BatchSource:
    """``rank``'s part of a split."""
    if isinstance(source, InMemorySource):
        return ShardedMemorySource(source, rank, world)
    if isinstance(source, LoaderSource):
        return ShardedLoaderSource(source, rank, world)
    raise TypeError(f"cannot shard a {type(source).__name__}")
