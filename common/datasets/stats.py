"""Per-channel mean / std of a split, for normalisation, with a JSON cache.

Statistics are taken over every pixel of every image after the same resize the model input gets
(:func:`common.images.resize_for_model`), in [0, 1] units; std is the population std (ddof = 0).
They are exact: per-channel 256-bin histograms are summed as integers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import BadImage, InvalidArgument
from common.images import decode_image, resize_for_model

logger = logging.getLogger(__name__)

_LEVELS = np.arange(256, dtype=np.float64)


def _path_of(sample: object) -> Path:
    return Path(sample if isinstance(sample, str | os.PathLike) else sample[0])  # type: ignore[index]


def _histograms(path: Path, image_size: int | None) -> np.ndarray | None:
    try:
        img = decode_image(path.read_bytes(), name=str(path))
    except (OSError, BadImage) as exc:
        logger.warning("statistics skip unreadable image %s: %s", path, exc)
        return None
    if image_size is not None:
        img = resize_for_model(img, image_size)
    return np.stack([np.bincount(img[:, :, c].ravel(), minlength=256) for c in range(3)])


def _compute(paths: list[Path], image_size: int | None, workers: int | None) -> tuple[list[float], list[float], int]:
    hist = np.zeros((3, 256), dtype=np.int64)
    readable = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for h in pool.map(lambda p: _histograms(p, image_size), paths):
            if h is not None:
                hist += h
                readable += 1
    if readable == 0:
        raise InvalidArgument(f"no readable images among {len(paths)} to compute channel statistics")
    count = hist.sum(axis=1).astype(np.float64)
    mean = (hist @ _LEVELS) / count / 255.0
    second = (hist @ (_LEVELS**2)) / count / 255.0**2
    std = np.sqrt(np.maximum(second - mean**2, 0.0))
    return [float(v) for v in mean], [float(v) for v in std], readable


def _cache_key(fingerprint: str, split: str, image_size: int | None, paths: list[Path]) -> dict[str, object]:
    samples_digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    return {"fingerprint": fingerprint, "split": split, "image_size": image_size, "samples": samples_digest}


def _cache_file(cache_dir: Path, key: dict[str, object]) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    size = key["image_size"] if key["image_size"] is not None else "native"
    return cache_dir / f"stats-{key['split']}-{size}-{name}.json"


def _read_cache(file: Path, key: dict[str, object]) -> tuple[list[float], list[float]] | None:
    try:
        entry = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable statistics cache %s: %s", file, exc)
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    mean, std = entry.get("mean"), entry.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def _write_cache(file: Path, entry: dict[str, object]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".stats-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh, indent=1)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def channel_mean_std(
    samples: Sequence[object],
    image_size: int | None,
    cache_dir: Path | None,
    fingerprint: str,
    *,
    split: str = "train",
    workers: int | None = None,
) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in [0, 1] units over ``samples`` (pass the TRAIN split only).

    Args:
        samples: ``Sample``/``(path, label)`` tuples or plain paths.
        image_size: images are resized to this square size first, as for the model; None keeps
            each image's own size. The thesis's casting numbers (0.5643 / 0.2386) are at the native
            300 px; at 224 px the std is 0.2371 (resizing smooths), the mean is unchanged.
        cache_dir: where ``stats-*.json`` entries live; None disables the cache.
        fingerprint: :func:`~common.datasets.imagefolder.dataset_fingerprint` of the dataset root.
            The cache key is fingerprint + split + image size + a digest of the sample paths, so a
            different train/val split never reuses another split's numbers.
        split: a name for the key and the cache file (normally "train").
        workers: decoding threads (default: up to 8).

    Raises:
        InvalidArgument: no samples, or none of them readable.
    """
    paths = [_path_of(s) for s in samples]
    if not paths:
        raise InvalidArgument("no samples to compute channel statistics from")
    key = _cache_key(fingerprint, split, image_size, paths)
    file = _cache_file(cache_dir, key) if cache_dir is not None else None
    if file is not None:
        cached = _read_cache(file, key)
        if cached is not None:
            logger.debug("channel statistics from cache %s", file)
            return cached
    mean, std, readable = _compute(paths, image_size, workers)
    logger.info("channel statistics over %d %s images at size %s: mean %s std %s", readable, split, image_size, mean, std)
    if file is not None:
        _write_cache(file, {"key": key, "mean": mean, "std": std, "images": readable, "unreadable": len(paths) - readable})
    return mean, std
