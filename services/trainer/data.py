"""Training data for one job: discovery, seeded split, train-split statistics, batch sources.

Small datasets are decoded once into memory (:func:`load_split_arrays`) and batched from tensors
(augmented per batch in torch); bigger ones stream through a DataLoader over
:class:`ImageFolderDataset`. Both are deterministic given (seed, epoch): the shuffle order and the
augmentations of epoch ``e`` do not depend on what ran before, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.datasets.imagefolder import (
    Augment,
    ImageFolderDataset,
    Sample,
    dataset_fingerprint,
    discover,
    load_split_arrays,
    split_train_val,
)
from common.datasets.stats import channel_mean_std
from common.errors import InvalidArgument
from services.trainer.augment import BatchAugmenter

log = logging.getLogger(__name__)

# Decode into memory when all splits together fit in this many bytes of float32 pixels.
DEFAULT_IN_MEMORY_BYTES = 1536 * 1024 * 1024

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A generator seed for one epoch of one purpose, independent of everything that ran before."""
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1, np.uint64)[0] >> 1)


class BatchSource(Protocol):
    """One split as batches."""

    samples: int

    def num_batches(self, train: bool) -> int: ...

    def batches(self, epoch: int, train: bool) -> Iterator[Batch]: ...

    def unreadable(self) -> int: ...


def _train_batches(n: int, batch_size: int) -> int:
    # A last training batch of one image is dropped: BatchNorm cannot train on a single sample.
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 else 0)


class InMemorySource:
    """A split decoded once into a float32 tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                 augmenter: BatchAugmenter | None, unreadable: int) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.samples = len(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.augmenter = augmenter
        self._unreadable = unreadable

    def num_batches(self, train: bool) -> int:
        if train:
            return _train_batches(self.samples, self.batch_size)
        return -(-self.samples // self.batch_size)

    def batches(self, epoch: int, train: bool) -> Iterator[Batch]:
        b = self.batch_size
        if not train:
            for start in range(0, self.samples, b):
                yield self.images[start:start + b], self.labels[start:start + b]
            return
        order = torch.randperm(self.samples, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        augment_gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
        for i in range(self.num_batches(True)):
            idx = order[i * b:(i + 1) * b]
            x = self.images[idx]
            if self.augmenter is not None:
                x = self.augmenter(x, augment_gen)
            yield x, self.labels[idx]

    def unreadable(self) -> int:
        return self._unreadable


class LoaderSource:
    """A split streamed from files through a DataLoader (augmentation per image, seeded per epoch)."""

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, seed: int, workers: int) -> None:
        self.dataset = dataset
        self.samples = len(dataset)
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self._first_pass_unreadable: int | None = None

    def num_batches(self, train: bool) -> int:
        if train:
            return _train_batches(self.samples, self.batch_size)
        return -(-self.samples // self.batch_size)

    def batches(self, epoch: int, train: bool) -> Iterator[Batch]:
        self.dataset.set_epoch(epoch)
        before = self.dataset.unreadable_count
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and self.samples % self.batch_size == 1,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)) if train else None,
            num_workers=self.workers,
            collate_fn=self.dataset.collate,
            persistent_workers=False,
        )
        for x, y in loader:
            if len(y):
                yield x, y
        if self._first_pass_unreadable is None:
            self._first_pass_unreadable = self.dataset.unreadable_count - before

    def unreadable(self) -> int:
        return self._first_pass_unreadable or 0


@dataclass
class PreparedData:
    classes: list[str]
    train: BatchSource
    val: BatchSource
    test: BatchSource | None
    mean: list[float]
    std: list[float]
    image_size: int
    fingerprint: str
    in_memory: bool
    counts: dict[str, int] = field(default_factory=dict)
    # The test split without copies of train / val images (set only when some test images are such copies).
    test_dedup: BatchSource | None = None
    class_counts: list[int] = field(default_factory=list)  # training split (after the val hold-out), per class

    def unreadable(self) -> int:
        sources = [self.train, self.val] + ([self.test] if self.test is not None else [])
        return sum(s.unreadable() for s in sources)


def prepare_data(root: Path, *, image_size: int, batch_size: int, val_fraction: float, seed: int,
                 augment: bool, loader_workers: int, cache_dir: Path | None,
                 in_memory_bytes: int = DEFAULT_IN_MEMORY_BYTES, test_duplicates: Collection[str] = (),
                 drop_test_duplicates: bool = False) -> PreparedData:
    """Discover, split (seeded, stratified), compute train-split mean/std, and build the batch sources.

    ``test_duplicates``: paths of test images that copy train / val images (the dataset check's). They are
    dropped from the test split with ``drop_test_duplicates``, else also evaluated without as ``test_dedup``.
    """
    folder = discover(root)
    train_samples, val_samples = split_train_val(folder.train, val_fraction=val_fraction, seed=seed)
    if not val_samples:
        raise InvalidArgument(f"the train split of {root} is too small to hold out a validation set")
    fingerprint = dataset_fingerprint(root)
    mean, std = channel_mean_std(train_samples, image_size, cache_dir, fingerprint)
    std = [max(s, 1e-6) for s in std]  # a constant channel would divide by zero
    test_samples, dedup_samples = folder.test, []
    if test_duplicates:
        duplicates = set(test_duplicates)
        kept = [s for s in folder.test if str(s.path) not in duplicates]
        if drop_test_duplicates:
            test_samples = kept
        elif len(kept) < len(folder.test):
            dedup_samples = kept
    splits: dict[str, list[Sample]] = {"train": train_samples, "val": val_samples, "test": test_samples,
                                       "test_dedup": dedup_samples}
    total = sum(len(s) for s in splits.values())
    in_memory = total * 3 * image_size * image_size * 4 <= in_memory_bytes
    augmenter = BatchAugmenter(Augment(), mean, std) if augment else None
    sources: dict[str, BatchSource | None] = {}
    for name, samples in splits.items():
        if not samples:
            sources[name] = None
            continue
        if in_memory:
            bad: list[Path] = []
            images, labels = load_split_arrays(samples, image_size, mean, std, unreadable=bad)
            if len(labels) == 0:
                raise InvalidArgument(f"no readable image in the {name} split of {root}")
            sources[name] = InMemorySource(images, labels, batch_size, seed,
                                           augmenter if name == "train" else None, len(bad))
        else:
            dataset = ImageFolderDataset(samples, image_size, mean, std, augment=augment and name == "train",
                                         seed=seed)
            sources[name] = LoaderSource(dataset, batch_size, seed, loader_workers)
    train, val = sources["train"], sources["val"]
    assert train is not None and val is not None
    log.info("dataset %s: %d classes, train %d / val %d / test %d (%d without copies of train) images, %s, "
             "mean %s std %s", root, len(folder.classes), len(train_samples), len(val_samples), len(test_samples),
             len(dedup_samples or test_samples),
             "in memory" if in_memory else "streamed", [round(m, 4) for m in mean], [round(s, 4) for s in std])
    return PreparedData(
        classes=folder.classes, train=train, val=val, test=sources["test"], mean=mean, std=std,
        image_size=image_size, fingerprint=fingerprint, in_memory=in_memory,
        counts={name: len(samples) for name, samples in splits.items() if samples or name != "test_dedup"},
        test_dedup=sources["test_dedup"],
        class_counts=[sum(1 for s in train_samples if s.label == c) for c in range(len(folder.classes))],
    )
