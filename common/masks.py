"""Defect masks: decode annotated masks in several formats into boolean ``H x W`` arrays.

Formats:

* ``"binary"``: a single-channel image, non-zero = defect. A grey image saved as RGB (all three
  channels equal) is accepted too.
* ``"color"``: PixelAnnotationTool colour masks, defect where the green channel is 0 (defects are
  painted red).
* ``"yolo"``: text, one ``class cx cy w h`` line per box, normalised to ``[0, 1]``; every class counts.
* ``"xyxy"``: text, one ``x0,y0,x1,y1`` line per box in pixels (commas or spaces).
* ``"auto"``: an image whose channels are all equal (or a single channel) is binary, another
  3-channel image is colour; text with 5 fields per line is YOLO, with 4 fields xyxy.

Boxes use continuous pixel coordinates: pixel ``(r, c)`` is the unit square ``[c, c+1) x [r, r+1)``;
a box marks every pixel it overlaps by more than ``EDGE_TOLERANCE`` (``x1``/``y1`` are exclusive
edges; the tolerance absorbs the rounding of normalised YOLO coordinates).

A mask image of another size than the image is resized with nearest neighbour: it keeps the mask
binary and moves no boundary by more than half a source pixel, where bilinear + threshold would
shift it depending on the threshold. A mask of another aspect ratio (beyond 1 %) is rejected: it
belongs to another image or crop, and stretching it would misplace the defect.

Masks come from callers, so they get the image limits before any work: a mask image's header goes
through :func:`common.images.check_header` (bytes, pixels, decoded buffer) and its aspect ratio is
checked from the header, before decoding; box text may hold at most ``max_boxes`` boxes, and
:func:`boxes_to_mask` paints any number of boxes in one pass over the mask (no cost per box and pixel).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from common.errors import InvalidArgument
from common.images import check_header, sniff_format

MASK_FORMATS = ("binary", "color", "yolo", "xyxy", "auto")
ASPECT_TOLERANCE = 0.01
EDGE_TOLERANCE = 1e-3  # pixels: rounding in normalised YOLO coordinates must not add a pixel row
MAX_BOXES = 10_000  # per mask; also keeps the box counts of boxes_to_mask within int16
MAX_MASK_BYTES = 20_000_000
MAX_MASK_PIXELS = 40_000_000

Box = tuple[float, float, float, float]


class EmptyMask(InvalidArgument):
    """A well-formed mask that marks no defect (no bytes, no boxes, no pixel): datasets skip these."""


def load_mask(data: bytes, fmt: str, height: int, width: int, *, max_bytes: int = MAX_MASK_BYTES,
              max_pixels: int = MAX_MASK_PIXELS, max_boxes: int = MAX_BOXES) -> np.ndarray:
    """Decode ``data`` into a boolean ``height x width`` mask (``True`` = defect).

    Args:
        max_bytes, max_pixels: the image limits (:func:`common.images.check_header`), for mask
            images and (bytes) box text alike, checked before decoding.
        max_boxes: most boxes a text mask may hold.

    Raises:
        InvalidArgument: unknown format, a limit exceeded, undecodable or malformed data, another
            aspect ratio, or a mask without any defect pixel.
    """
    if fmt not in MASK_FORMATS:
        raise InvalidArgument(f"unknown mask format {fmt!r}; choose one of {', '.join(MASK_FORMATS)}")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise InvalidArgument(f"image size must be positive integers, got {height}x{width}")
    if not data:
        raise EmptyMask("mask is empty (no bytes)")
    if len(data) > max_bytes:
        raise InvalidArgument(f"mask is too large: {len(data)} bytes > limit {max_bytes}")

    is_image = sniff_format(data) is not None
    if fmt in ("yolo", "xyxy"):
        mask = _text_mask(data, fmt, height, width, max_boxes)
    elif not is_image and fmt == "auto":
        mask = _text_mask(data, _sniff_text_format(data), height, width, max_boxes)
    elif not is_image:
        raise InvalidArgument(f"cannot decode the {fmt} mask as an image (not a PNG, JPEG, BMP or TIFF)")
    else:
        header = check_header(data, max_bytes=max_bytes, max_pixels=max_pixels, what=f"{fmt} mask")
        _check_aspect(header.height, header.width, height, width)
        image = _decode_image(data)
        if image is None:
            raise InvalidArgument(f"cannot decode the {fmt} mask as an image (truncated or corrupt)")
        mask = _image_mask(image, fmt)
        mask = _fit_size(mask, height, width)
    if not mask.any():
        raise EmptyMask("mask marks no defect pixel")
    return mask


def boxes_to_mask(boxes: Iterable[Sequence[float]], height: int, width: int, *,
                  max_boxes: int = MAX_BOXES) -> np.ndarray:
    """Boolean ``height x width`` mask of the pixels the boxes ``(x0, y0, x1, y1)`` overlap.

    Boxes are clipped to the image; one entirely outside marks nothing. The boxes are summed into a
    2-D difference array and integrated once, so the cost is one pass over the mask however many
    boxes overlap.

    Raises:
        InvalidArgument: more than ``max_boxes`` boxes, a non-finite, empty or inverted box.
    """
    boxes = list(boxes)
    if len(boxes) > max_boxes:
        raise InvalidArgument(f"mask has {len(boxes)} boxes > limit {max_boxes}")
    if max_boxes > np.iinfo(np.int16).max:
        raise InvalidArgument(f"max_boxes {max_boxes} is above {np.iinfo(np.int16).max}")
    edges = np.zeros((height + 1, width + 1), dtype=np.int16)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise InvalidArgument(f"box {box!r} has a non-finite coordinate")
        if x1 <= x0 or y1 <= y0:
            raise InvalidArgument(f"box {box!r} is empty or inverted: need x0 < x1 and y0 < y1")
        c0, c1 = max(0, math.floor(x0 + EDGE_TOLERANCE)), min(width, math.ceil(x1 - EDGE_TOLERANCE))
        r0, r1 = max(0, math.floor(y0 + EDGE_TOLERANCE)), min(height, math.ceil(y1 - EDGE_TOLERANCE))
        if c0 < c1 and r0 < r1:
            edges[r0, c0] += 1
            edges[r0, c1] -= 1
            edges[r1, c0] -= 1
            edges[r1, c1] += 1
    np.cumsum(edges, axis=0, dtype=np.int16, out=edges)
    np.cumsum(edges, axis=1, dtype=np.int16, out=edges)
    return edges[:height, :width] > 0


def _decode_image(data: bytes) -> np.ndarray | None:
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if image is None or image.size == 0:
        return None
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # drop alpha
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def _image_mask(image: np.ndarray, fmt: str) -> np.ndarray:
    grey = image.ndim == 2 or bool(
        (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all())
    if fmt == "auto":
        fmt = "binary" if grey else "color"
    if fmt == "binary":
        if not grey:
            raise InvalidArgument(
                "binary mask must be single-channel (or grey saved as RGB); this one has colours: use 'color'")
        plane = image if image.ndim == 2 else image[:, :, 0]
        return plane != 0
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgument("colour mask must have 3 channels; a single-channel mask is 'binary'")
    return image[:, :, 1] == 0  # green channel (index 1 in both BGR and RGB)


def _check_aspect(mh: int, mw: int, height: int, width: int) -> None:
    if (mh, mw) != (height, width) and abs((mh / mw) / (height / width) - 1.0) > ASPECT_TOLERANCE:
        raise InvalidArgument(
            f"mask is {mw}x{mh} (w x h) but the image is {width}x{height}: another aspect ratio")


def _fit_size(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    mh, mw = mask.shape
    if (mh, mw) == (height, width):
        return mask
    _check_aspect(mh, mw, height, width)
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


_SPLIT = re.compile(r"[,\s]+")


def _text_lines(data: bytes) -> list[list[str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("mask is neither a decodable image nor UTF-8 text") from None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append([f for f in _SPLIT.split(line) if f])
    if not rows:
        raise EmptyMask("mask text has no boxes")
    return rows


def _sniff_text_format(data: bytes) -> str:
    counts = {len(row) for row in _text_lines(data)}
    if counts == {5}:
        return "yolo"
    if counts == {4}:
        return "xyxy"
    raise InvalidArgument(
        f"cannot tell the mask format: lines have {sorted(counts)} fields (YOLO has 5, xyxy has 4)")


def _numbers(row: list[str], line_no: int) -> list[float]:
    try:
        values = [float(f) for f in row]
    except ValueError:
        raise InvalidArgument(f"mask line {line_no}: {' '.join(row)!r} is not numeric") from None
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"mask line {line_no}: non-finite number")
    return values


def _text_mask(data: bytes, fmt: str, height: int, width: int, max_boxes: int) -> np.ndarray:
    boxes: list[Box] = []
    rows = _text_lines(data)
    if len(rows) > max_boxes:  # before any number is parsed
        raise InvalidArgument(f"mask text has {len(rows)} boxes > limit {max_boxes}")
    for line_no, row in enumerate(rows, start=1):
        if fmt == "yolo":
            if len(row) != 5:
                raise InvalidArgument(f"YOLO line {line_no} needs 5 fields (class cx cy w h), got {len(row)}")
            cls, cx, cy, bw, bh = _numbers(row, line_no)
            if cls < 0 or cls != int(cls):
                raise InvalidArgument(f"YOLO line {line_no}: class {row[0]!r} is not a non-negative integer")
            if not all(0.0 <= v <= 1.0 for v in (cx, cy, bw, bh)) or bw <= 0 or bh <= 0:
                raise InvalidArgument(f"YOLO line {line_no}: cx cy w h must be normalised to [0, 1], w, h > 0")
            boxes.append(((cx - bw / 2) * width, (cy - bh / 2) * height,
                          (cx + bw / 2) * width, (cy + bh / 2) * height))
        else:
            if len(row) != 4:
                raise InvalidArgument(f"xyxy line {line_no} needs 4 fields (x0,y0,x1,y1), got {len(row)}")
            x0, y0, x1, y1 = _numbers(row, line_no)
            boxes.append((x0, y0, x1, y1))
    return boxes_to_mask(boxes, height, width, max_boxes=max_boxes)


__all__ = ["MASK_FORMATS", "MAX_BOXES", "EmptyMask", "boxes_to_mask", "load_mask"]
