"""Annotated image sets: pair images with their defect masks and load them.

An image ``<images>/<sub>/<stem>.<ext>`` is annotated by ``<masks>/<sub>/<stem>.png`` (binary or colour
masks) or ``<masks>/<sub>/<stem>.txt`` (YOLO or x0,y0,x1,y1 boxes): the same relative folder and stem.
Images without such a file are not evaluated; they are counted, so a report can say how many were
left out. A mask file that marks nothing (an empty YOLO label, an all-black PNG) is counted likewise
when it is loaded; a corrupt one fails the request with its file name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datasets.imagefolder import IMAGE_EXTENSIONS
from common.errors import InvalidArgument
from common.images import decode_image
from common.masks import EmptyMask, load_mask

#: Mask file suffixes tried per format, in order.
MASK_SUFFIXES: dict[str, tuple[str, ...]] = {
    "binary": (".png",),
    "color": (".png",),
    "yolo": (".txt",),
    "xyxy": (".txt",),
    "auto": (".png", ".txt"),
}


@dataclass(frozen=True)
class AnnotatedImage:
    name: str  # the image's path relative to the images folder, with '/' separators
    image: Path
    mask: Path


@dataclass(frozen=True)
class AnnotatedSet:
    items: list[AnnotatedImage]
    without_mask: int  # images under the folder that have no mask file
    mask_format: str


@dataclass(frozen=True)
class LoadedSample:
    item: AnnotatedImage
    image: np.ndarray  # RGB uint8
    mask: np.ndarray  # bool, at the image's size


def _walk_images(root: Path, exclude: Path | None) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (exclude is None or here / d != exclude))
        found.extend(here / f for f in filenames
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def find_annotated(images_root: Path, masks_root: Path, mask_format: str = "auto", limit: int = 0) -> AnnotatedSet:
    """Pair every image under ``images_root`` (recursively) with its mask under ``masks_root``.

    ``limit`` keeps the first ``limit`` pairs in path order (0 = all).

    Raises:
        InvalidArgument: a folder that is not a directory, an unknown format, or no image with a mask.
    """
    if mask_format not in MASK_SUFFIXES:
        raise InvalidArgument(f"unknown mask format {mask_format!r}; choose one of {', '.join(MASK_SUFFIXES)}")
    for what, folder in (("images_path", images_root), ("masks_path", masks_root)):
        if not folder.is_dir():
            raise InvalidArgument(f"{what} is not a directory")  # the server's absolute path is not repeated
    exclude = masks_root if masks_root != images_root and masks_root.is_relative_to(images_root) else None
    images = _walk_images(images_root, exclude)
    items: list[AnnotatedImage] = []
    without = 0
    for image in images:
        relative = image.relative_to(images_root)
        stem = masks_root / relative.parent / relative.stem
        mask = next((p for p in (stem.with_name(stem.name + s) for s in MASK_SUFFIXES[mask_format])
                     if p.is_file() and p != image), None)
        if mask is None:
            without += 1
        else:
            items.append(AnnotatedImage(relative.as_posix(), image, mask))
    if not items:
        suffixes = " or ".join(MASK_SUFFIXES[mask_format])
        raise InvalidArgument(
            f"no image under images_path ({len(images)} images) has a mask <same sub-folder>/<stem>{suffixes} "
            "under masks_path")
    if limit:
        items = items[:limit]
    return AnnotatedSet(items, without, mask_format)


def load_sample(item: AnnotatedImage, mask_format: str, *, max_bytes: int, max_pixels: int) -> LoadedSample | None:
    """Decode one image and its mask; ``None`` when the mask marks no defect (skip and count it).

    Raises:
        InvalidArgument: an undecodable image or mask (the message names the file).
    """
    image = decode_image(_read_bounded(item.image, max_bytes, item.name), max_bytes=max_bytes, max_pixels=max_pixels,
                         name=item.name)
    h, w = image.shape[:2]
    try:
        mask = load_mask(_read_bounded(item.mask, max_bytes, f"mask of {item.name}"), mask_format, h, w,
                         max_bytes=max_bytes, max_pixels=max_pixels)
    except EmptyMask:
        return None
    except InvalidArgument as exc:
        raise InvalidArgument(f"mask {item.mask.name} of {item.name}: {exc.message}") from exc
    return LoadedSample(item, image, mask)


def _read_bounded(path: Path, max_bytes: int, label: str) -> bytes:
    """The file's bytes, refused from its size before reading when it is over the limit."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidArgument(f"{label} is too large: {size} bytes > limit {max_bytes}")
    return path.read_bytes()


def batches(items: Sequence[AnnotatedImage], size: int) -> Iterator[list[AnnotatedImage]]:
    for start in range(0, len(items), max(1, size)):
        yield list(items[start:start + max(1, size)])


@dataclass(frozen=True)
class SampleBatch:
    samples: list[LoadedSample]  # decoded images with a non-empty mask
    done: int  # images taken from the set so far, this batch included
    empty: int  # images skipped so far because their mask marks no defect


def sample_batches(dataset: AnnotatedSet, size: int, *, max_bytes: int, max_pixels: int) -> Iterator[SampleBatch]:
    """Decode the set batch by batch, counting what was taken and what was skipped."""
    done = empty = 0
    for batch in batches(dataset.items, size):
        loaded = [load_sample(item, dataset.mask_format, max_bytes=max_bytes, max_pixels=max_pixels) for item in batch]
        samples = [s for s in loaded if s is not None]
        empty += len(loaded) - len(samples)
        done += len(batch)
        yield SampleBatch(samples, done, empty)
