"""Defect mask decoding (common/masks.py): every format, size handling and every error."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.errors import InvalidArgument
from common.masks import boxes_to_mask, load_mask


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def expected_box(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


BOX = expected_box(6, 8, slice(1, 4), slice(2, 5))


def test_binary_single_channel() -> None:
    image = np.zeros((6, 8), np.uint8)
    image[1:4, 2:5] = 1  # any non-zero value is a defect
    for fmt in ("binary", "auto"):
        assert np.array_equal(load_mask(png(image), fmt, 6, 8), BOX)


def test_white_on_black_rgb_is_binary_not_colour() -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    image[1:4, 2:5] = 255
    assert np.array_equal(load_mask(png(image), "auto", 6, 8), BOX)
    assert np.array_equal(load_mask(png(image), "binary", 6, 8), BOX)
    # read as a colour mask it would be inverted (green == 0 on the black background): auto must not
    assert np.array_equal(load_mask(png(image), "color", 6, 8), ~BOX)


def test_colour_mask_green_zero_is_defect() -> None:
    bgr = np.full((6, 8, 3), 255, np.uint8)  # white background
    bgr[0, :] = (0, 200, 0)  # another label (green channel non-zero): not a defect
    bgr[1:4, 2:5] = (0, 0, 255)  # red defect (BGR)
    for fmt in ("color", "auto"):
        assert np.array_equal(load_mask(png(bgr), fmt, 6, 8), BOX)
    rgba = np.dstack([bgr, np.full((6, 8), 255, np.uint8)])  # alpha channel is ignored
    assert np.array_equal(load_mask(png(rgba), "auto", 6, 8), BOX)
    with pytest.raises(InvalidArgument, match="use 'color'"):
        load_mask(png(bgr), "binary", 6, 8)
    with pytest.raises(InvalidArgument, match="3 channels"):
        load_mask(png(np.zeros((6, 8), np.uint8)), "color", 6, 8)


def test_yolo_and_xyxy_text() -> None:
    yolo = b"0 0.4375 0.41666667 0.375 0.5\n"  # cx=3.5 px, cy=2.5 px, w=3 px, h=3 px on 8x6
    for fmt in ("yolo", "auto"):
        assert np.array_equal(load_mask(yolo, fmt, 6, 8), BOX)
    xyxy = b"# x0,y0,x1,y1\n2,1,5,4\n\n7, 5, 9, 9\n"
    expected = BOX.copy()
    expected[5, 7] = True  # second box clipped to the image
    for fmt in ("xyxy", "auto"):
        assert np.array_equal(load_mask(xyxy, fmt, 6, 8), expected)
    assert np.array_equal(load_mask(b"2 1 5 4", "xyxy", 6, 8), BOX)  # spaces work too
    assert load_mask(b"3 0.5 0.5 1 1\n1 0.1 0.1 0.1 0.1", "yolo", 6, 8).all()  # any class


def test_boxes_to_mask_covers_overlapped_pixels() -> None:
    mask = boxes_to_mask([(1.5, 0.2, 3.0, 1.0)], 3, 5)
    assert np.array_equal(mask, expected_box(3, 5, slice(0, 1), slice(1, 3)))
    assert not boxes_to_mask([(10, 10, 12, 12)], 3, 5).any()
    assert not boxes_to_mask([], 3, 5).any()
    with pytest.raises(InvalidArgument, match="inverted"):
        boxes_to_mask([(3, 0, 1, 2)], 3, 5)


def test_resize_nearest_same_aspect() -> None:
    small = np.zeros((3, 4), np.uint8)
    small[1, 1:3] = 255
    mask = load_mask(png(small), "binary", 6, 8)
    assert mask.shape == (6, 8)
    assert np.array_equal(mask, np.kron(small > 0, np.ones((2, 2), bool)))
    big = np.kron(small, np.ones((10, 10), np.uint8))  # 30 x 40 down to 6 x 8
    assert np.array_equal(load_mask(png(big), "auto", 6, 8), mask)


def test_errors() -> None:
    square = np.full((8, 8), 255, np.uint8)
    cases = [
        (png(square), "binary", "aspect ratio"),
        (png(np.zeros((6, 8), np.uint8)), "binary", "no defect pixel"),
        (png(np.full((6, 8, 3), 255, np.uint8)), "color", "no defect pixel"),
        (b"\x89PNG\r\n\x1a\n garbage", "binary", "binary mask is not a valid PNG"),
        (b"\xff\xfe\x00\x81 not an image", "auto", "neither a decodable image nor UTF-8"),
        (b"", "auto", "empty"),
        (b"\n# nothing\n", "yolo", "no boxes"),
        (b"0 0.5 0.5 0.2", "yolo", "5 fields"),
        (b"0 0.5 0.5 1.2 0.2", "yolo", r"normalised"),
        (b"a 0.5 0.5 0.2 0.2", "yolo", "not numeric"),
        (b"0.5 0.5 0.5 0.2 0.2", "yolo", "class"),
        (b"1,2,3", "xyxy", "4 fields"),
        (b"1,2,nan,4", "xyxy", "non-finite"),
        (b"5,1,2,4", "xyxy", "inverted"),
        (b"100,100,120,120", "xyxy", "no defect pixel"),
        (b"1 2 3\n1 2 3 4 5", "auto", "cannot tell"),
        (png(square[:6]), "rle", "unknown mask format"),
    ]
    for data, fmt, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            load_mask(data, fmt, 6, 8)
    with pytest.raises(InvalidArgument, match="positive"):
        load_mask(png(square), "binary", 0, 8)
