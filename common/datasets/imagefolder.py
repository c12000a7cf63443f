"""ImageFolder datasets: discovery, seeded train/val split, a torch Dataset and an in-memory loader.

Layout: ``root/train/<class>/**/<image>`` and optionally ``root/test/<class>/...`` with the same
classes. Classes are the sorted sub-folder names of ``train/`` (label = index in that list).

Unreadable images are not detected during discovery (decoding thousands of files up front is
slow). :class:`ImageFolderDataset` returns ``None`` for them, :meth:`ImageFolderDataset.collate`
drops them from the batch, and :attr:`ImageFolderDataset.unreadable_count` counts them.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from common.errors import BadImage, InvalidArgument
from common.images import decode_image, preprocess

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class Sample(NamedTuple):
    """One image file and its class index (a plain (path, label) tuple, like torchvision's)."""

    path: Path
    label: int


@dataclass(frozen=True)
class ImageFolder:
    """A discovered ImageFolder root: its classes and the train / test samples, sorted by path."""

    root: Path
    classes: list[str]
    train: list[Sample]
    test: list[Sample]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if _is_image(f))
    return sorted(found)


def _samples(split_dir: Path, classes: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        files = _images_under(split_dir / cls)
        if not files:
            raise InvalidArgument(
                f"class {cls!r} in {split_dir} has no images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        samples.extend(Sample(f, label) for f in files)
    return samples


def discover(root: Path) -> ImageFolder:
    """Find classes and samples under ``root``. A missing ``test/`` gives an empty test list.

    Raises:
        InvalidArgument: no ``train/`` folder, fewer than 2 classes, a class without images,
            or ``test/`` classes that differ from ``train/``'s.
    """
    root = Path(root)
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise InvalidArgument(f"{root} has no train/ folder (expected root/train/<class>/<images>)")
    classes = _class_dirs(train_dir)
    if len(classes) < 2:
        raise InvalidArgument(f"{train_dir} has {len(classes)} class folder(s) {classes}; at least 2 classes are needed")
    train = _samples(train_dir, classes)
    test: list[Sample] = []
    if test_dir.is_dir():
        test_classes = _class_dirs(test_dir)
        if test_classes != classes:
            raise InvalidArgument(f"test/ classes {test_classes} differ from train/ classes {classes}")
        test = _samples(test_dir, classes)
    return ImageFolder(root=root, classes=classes, train=train, test=test)


def split_train_val(
    samples: Sequence[Sample], *, val_fraction: float = 0.1, seed: int = 0, stratified: bool = True
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (train, val), both sorted by path; the same seed gives the same split.

    Stratified: each class gives ``round(n_class * val_fraction)`` images to val, at least one when
    ``val_fraction > 0`` and the class has two or more images, and always keeps one for training.
    Plain: ``round(n * val_fraction)`` images drawn from all samples.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidArgument(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(samples)
    rng = np.random.default_rng(seed)
    if stratified:
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(ordered):
            groups.setdefault(s.label, []).append(i)
        val_idx: set[int] = set()
        for label in sorted(groups):
            members = groups[label]
            n_val = round(len(members) * val_fraction)
            if val_fraction > 0 and len(members) >= 2:
                n_val = max(n_val, 1)
            n_val = min(n_val, len(members) - 1)
            val_idx.update(int(i) for i in rng.permutation(members)[:n_val])
    else:
        n_val = round(len(ordered) * val_fraction)
        val_idx = {int(i) for i in rng.permutation(len(ordered))[:n_val]}
    train = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return train, val


def dataset_fingerprint(root: Path) -> str:
    """sha256 over the relative paths, sizes and mtimes of the image files under ``root``.

    Fast (no pixels are read); changes when an image is added, removed, renamed or rewritten.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in _images_under(root):
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Augment:
    """Cheap numpy augmentations applied after preprocessing (all on by default).

    Brightness / contrast are applied in [0, 1] pixel units and clipped to that range:
    ``x' = clip((x - 0.5) * c + 0.5 + b)`` with ``c ~ U(1 - contrast, 1 + contrast)``,
    ``b ~ U(-brightness, brightness)``.
    """

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1


def _augment(x: np.ndarray, aug: Augment, rng: np.random.Generator, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    if aug.hflip and rng.random() < 0.5:
        x = x[:, :, ::-1]
    if aug.vflip and rng.random() < 0.5:
        x = x[:, ::-1, :]
    if aug.rot90:
        x = np.rot90(x, int(rng.integers(0, 4)), axes=(1, 2))
    x = np.ascontiguousarray(x)
    if aug.brightness > 0 or aug.contrast > 0:
        c = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness)
        # The affine map on normalised values z = (x - m) / s equivalent to the one on pixels x.
        offset = ((c * (mean - 0.5) + 0.5 + b - mean) / std).astype(np.float32)
        x *= np.float32(c)
        x += offset[:, None, None]
        lo = (-mean / std).astype(np.float32)[:, None, None]
        hi = ((1 - mean) / std).astype(np.float32)[:, None, None]
        np.clip(x, lo, hi, out=x)
    return x


class ImageFolderDataset(Dataset):
    """Decode + preprocess (+ optionally augment) image files; items are ``(CHW float32, label)``.

    An unreadable file (I/O error or :class:`BadImage`) yields ``None``, is logged, and is counted
    in :attr:`unreadable_count`; use :meth:`collate` as the DataLoader's ``collate_fn`` to drop such
    items. The count lives in shared memory, so it includes what DataLoader worker processes saw;
    :attr:`unreadable_paths` is only complete with ``num_workers=0`` (workers keep their own copy).
    Because of that shared counter the dataset cannot be pickled or deep-copied except by
    multiprocessing itself when it starts DataLoader workers (fork or spawn both work).

    Augmentation is seeded per item from ``(seed, epoch, index)``: results do not depend on the
    number of workers. Call :meth:`set_epoch` before each epoch to get new augmentations
    (with non-persistent workers, which receive a fresh copy of the dataset every epoch).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: Augment | bool = False,
        seed: int = 0,
        max_bytes: int = 20_000_000,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.augment: Augment | None = Augment() if augment is True else (augment or None)
        self.seed = seed
        self.epoch = 0
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._unreadable = multiprocessing.Value("q", 0)
        self.unreadable_paths: set[Path] = set()
        self._mean_arr = np.asarray(self.mean, np.float64)
        self._std_arr = np.asarray(self.std, np.float64)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def unreadable_count(self) -> int:
        """Items that could not be read so far (every epoch's reads count again)."""
        return int(self._unreadable.value)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            data = Path(path).read_bytes()
            img = decode_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, name=str(path))
        except (OSError, BadImage) as exc:
            logger.warning("skipping unreadable image %s: %s", path, exc)
            with self._unreadable.get_lock():
                self._unreadable.value += 1
            self.unreadable_paths.add(Path(path))
            return None
        x = preprocess(img, self.image_size, self.mean, self.std)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x = _augment(x, self.augment, rng, self._mean_arr, self._std_arr)
        return torch.from_numpy(x), int(label)

    def collate(self, batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate, dropping unreadable items; an all-unreadable batch gives empty tensors."""
        return collate_skip_unreadable(batch, self.image_size)


def collate_skip_unreadable(
    batch: list[tuple[torch.Tensor, int] | None], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Default-collate the readable items of ``batch``; (0, 3, S, S) and (0,) when none is."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty((0, 3, image_size, image_size)), torch.empty((0,), dtype=torch.int64)
    return default_collate(kept)


def load_split_arrays(
    samples: Sequence[Sample],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    workers: int | None = None,
    unreadable: list[Path] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess every sample once, in a thread pool (OpenCV releases the GIL).

    Returns ``(images, labels)``: float32 (N, 3, S, S) and int64 (N,), in sample order, without the
    unreadable files (appended to ``unreadable`` when given, and logged). Memory is
    ``N * 3 * S * S * 4`` bytes (the casting train split at 224 px is about 4 GB), so this suits
    small and medium datasets; use :class:`ImageFolderDataset` for big ones.
    ``progress(done, total)`` is called from worker threads as images finish.
    """
    n = len(samples)
    images = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    labels = np.asarray([int(s[1]) for s in samples], dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    finished = itertools.count(1)  # next() on a count is atomic under the GIL

    def load(i: int) -> None:
        path = Path(samples[i][0])
        try:
            img = decode_image(path.read_bytes(), name=str(path))
        except (OSError, BadImage) as exc:
            logger.warning("skipping unreadable image %s: %s", path, exc)
            ok[i] = False
        else:
            images[i] = preprocess(img, image_size, mean, std)
        if progress is not None:
            progress(next(finished), n)

    max_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(load, range(n)))
    if unreadable is not None:
        unreadable.extend(Path(samples[i][0]) for i in np.flatnonzero(~ok))
    if ok.all():
        return images, labels
    return images[ok], labels[ok]
