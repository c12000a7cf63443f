"""common.images: safe decoding of untrusted bytes, preprocessing, PNG encoding."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from common.errors import BadImage, InvalidArgument
from common.images import (
    decode_image,
    encode_png,
    preprocess,
    preprocess_batch,
    read_header,
    resize_for_model,
    sniff_format,
)

EXT = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "tiff": ".tiff"}


def _encode(img_bgr_or_gray: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img_bgr_or_gray)
    assert ok
    return buf.tobytes()


def _png(width: int, height: int, color_type: int, bit_depth: int, raw_rows: bytes) -> bytes:
    """A hand-made PNG (one IDAT), for layouts OpenCV will not encode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


@pytest.fixture
def rgb() -> np.ndarray:
    """A 20x30 RGB image whose channels are distinguishable (R=200, G=100, B=30 plus a ramp)."""
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 30
    img[:, :, 1] += np.arange(30, dtype=np.uint8)
    return img


@pytest.fixture
def gray() -> np.ndarray:
    return (np.arange(20 * 30) % 251).astype(np.uint8).reshape(20, 30)


# --- rejection -------------------------------------------------------------------------------


def test_empty_bytes_rejected() -> None:
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", name="a.png")


def test_random_bytes_rejected_with_name() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(BadImage, match="unsupported format") as info:
        decode_image(data, name="cam7/frame.bin")
    assert "cam7/frame.bin" in info.value.message


def test_gif_is_not_accepted() -> None:
    gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
    assert sniff_format(gif) is None
    with pytest.raises(BadImage, match="jpeg, png, bmp, tiff"):
        decode_image(gif)


def test_too_many_bytes_rejected(gray: np.ndarray) -> None:
    data = _encode(gray, ".png")
    with pytest.raises(BadImage, match="too large"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).shape == (20, 30, 3)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".tiff"])
def test_truncated_rejected(rgb: np.ndarray, ext: str) -> None:
    data = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ext)
    with pytest.raises(BadImage):
        decode_image(data[: len(data) // 2], name="half" + ext)


def test_jpeg_cut_inside_header_rejected(rgb: np.ndarray) -> None:
    data = _encode(rgb, ".jpg")
    with pytest.raises(BadImage, match="JPEG"):
        decode_image(data[:100])


def test_corrupt_png_data_rejected() -> None:
    good = _png(8, 8, 0, 8, b"".join(b"\x00" + bytes(8) for _ in range(8)))
    idat = good.index(b"IDAT") + 4
    corrupt = good[:idat] + b"\x00garbage-not-zlib" + good[idat + 17 :]
    with pytest.raises(BadImage, match="truncated or corrupt"):
        decode_image(corrupt)


def test_png_header_bomb_rejected_before_decoding() -> None:
    # IHDR claims 30000x30000 RGBA (3.6 GB decoded); the data is tiny and never decoded.
    bomb = _png(30000, 30000, 6, 8, b"\x00" * 100)
    assert len(bomb) < 200
    assert read_header(bomb)[:3] == ("png", 30000, 30000)
    with pytest.raises(BadImage, match="900000000 pixels"):
        decode_image(bomb, name="bomb.png")


def _patch_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """Rewrite the size stored in a real file's header."""
    buf = bytearray(data)
    if fmt == "png":
        buf[16:24] = struct.pack(">II", width, height)
    elif fmt == "bmp":
        buf[18:26] = struct.pack("<ii", width, height)
    elif fmt == "jpeg":
        i = 2
        while buf[i + 1] not in (0xC0, 0xC1, 0xC2):
            i += 2 + struct.unpack(">H", buf[i + 2 : i + 4])[0]
        buf[i + 5 : i + 9] = struct.pack(">HH", height, width)
    else:  # little-endian classic TIFF written by OpenCV: patch tags 256/257 in the first IFD
        assert buf[:4] == b"II*\x00"
        ifd = struct.unpack("<I", buf[4:8])[0]
        for k in range(struct.unpack("<H", buf[ifd : ifd + 2])[0]):
            pos = ifd + 2 + 12 * k
            tag, typ = struct.unpack("<HH", buf[pos : pos + 4])
            if tag in (256, 257):
                value = width if tag == 256 else height
                fmt_ = "<H" if typ == 3 else "<I"
                buf[pos + 8 : pos + 8 + struct.calcsize(fmt_)] = struct.pack(fmt_, value)
    return bytes(buf)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "bmp", "tiff"])
def test_pixel_limit_read_from_every_header(gray: np.ndarray, fmt: str) -> None:
    data = _encode(gray, EXT[fmt])
    assert read_header(data)[:3] == (fmt, 30, 20)
    huge = _patch_size(data, fmt, 30000, 30000)
    assert read_header(huge)[:3] == (fmt, 30000, 30000)
    with pytest.raises(BadImage, match="pixels > limit"):
        decode_image(huge)
    with pytest.raises(BadImage, match="pixels > limit"):
        decode_image(data, max_pixels=599)


def test_zero_size_header_rejected(gray: np.ndarray) -> None:
    with pytest.raises(BadImage, match="empty size"):
        decode_image(_patch_size(_encode(gray, ".png"), "png", 0, 20))


def test_float_tiff_rejected_from_its_header() -> None:
    data = _encode(np.full((4, 4), 0.5, np.float32), ".tiff")
    with pytest.raises(BadImage, match="32 bits per sample"):
        decode_image(data)


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_lossless_colour_decodes_to_rgb(rgb: np.ndarray, fmt: str) -> None:
    data = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), EXT[fmt])
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_lossless_gray_replicated(gray: np.ndarray, fmt: str) -> None:
    out = decode_image(_encode(gray, EXT[fmt]))
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_jpeg_colour_and_gray(rgb: np.ndarray) -> None:
    out = decode_image(_encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".jpg"))
    assert out.shape == (20, 30, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6  # lossy, but R/G/B not swapped
    flat = np.full((16, 16), 77, np.uint8)
    out = decode_image(_encode(flat, ".jpg"))
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - 77).max() <= 2


def test_gray_alpha_png_becomes_rgb() -> None:
    rows = b"".join(b"\x00" + b"".join(bytes([10 * x + y, 128]) for x in range(4)) for y in range(3))
    out = decode_image(_png(4, 3, 4, 8, rows))
    expected = np.array([[10 * x + y for x in range(4)] for y in range(3)], np.uint8)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_rgba_png_drops_alpha(rgb: np.ndarray) -> None:
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((20, 30), 9, np.uint8)])
    out = decode_image(_encode(bgra, ".png"))
    np.testing.assert_array_equal(out, rgb)


def test_sixteen_bit_png_scaled_to_eight(gray: np.ndarray) -> None:
    out = decode_image(_encode(gray.astype(np.uint16) * 257, ".png"))
    np.testing.assert_array_equal(out[:, :, 0], gray)
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[..., 2] = 65535  # red in BGR order
    out = decode_image(_encode(rgb16, ".png"))
    assert out[0, 0].tolist() == [255, 0, 0]


# --- preprocessing ---------------------------------------------------------------------------

MEAN, STD = [0.5643] * 3, [0.2386] * 3


def test_preprocess_constant_values() -> None:
    img = np.zeros((40, 50, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 128, 255
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    out = preprocess(img, 16, mean, std)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    for c, v in enumerate((0, 128, 255)):
        np.testing.assert_allclose(out[c], (v / 255 - mean[c]) / std[c], rtol=0, atol=1e-6)


def test_preprocess_matches_reference_resize() -> None:
    img = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    shrink = preprocess(img, 32, MEAN, STD)
    ref = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64) / 255
    np.testing.assert_allclose(shrink, ((ref - 0.5643) / 0.2386).transpose(2, 0, 1), atol=1e-5)
    grow = preprocess(img, 128, MEAN, STD)
    ref = cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR).astype(np.float64) / 255
    np.testing.assert_allclose(grow, ((ref - 0.5643) / 0.2386).transpose(2, 0, 1), atol=1e-5)


def test_preprocess_accepts_gray_and_rejects_bad_input() -> None:
    g = np.full((10, 10), 200, np.uint8)
    np.testing.assert_array_equal(resize_for_model(g, 10)[:, :, 2], g)
    assert preprocess(g, 8, MEAN, STD).shape == (3, 8, 8)
    with pytest.raises(InvalidArgument, match="uint8"):
        preprocess(g.astype(np.float32), 8, MEAN, STD)
    with pytest.raises(InvalidArgument, match="positive"):
        preprocess(g, 8, MEAN, [0.2, 0.0, 0.2])
    with pytest.raises(InvalidArgument, match="3 values"):
        preprocess(g, 8, [0.5], STD)


def test_preprocess_batch_equals_single() -> None:
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 40), (64, 64), (10, 7)]]
    batch = preprocess_batch(imgs, 24, MEAN, STD)
    assert batch.shape == (3, 3, 24, 24) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(img, 24, MEAN, STD))
    assert preprocess_batch([], 24, MEAN, STD).shape == (0, 3, 24, 24)


def test_encode_png_round_trip(rgb: np.ndarray, gray: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    assert decode_image(encode_png(gray))[:, :, 1].tolist() == gray.tolist()
    with pytest.raises(InvalidArgument):
        encode_png(np.zeros((2, 2, 2), np.uint8))


def test_preprocess_accepts_flipped_views() -> None:
    img = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    flipped = img[::-1, ::-1]
    np.testing.assert_array_equal(preprocess(flipped, 16, MEAN, STD), preprocess(flipped.copy(), 16, MEAN, STD))
