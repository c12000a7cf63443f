"""Limits checked from headers before any decode: masks, channels, bit depth, box counts, the OpenCV backstop."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import BadImage, InvalidArgument
from common.images import check_header, decode_image, read_header
from common.masks import MAX_BOXES, boxes_to_mask, load_mask
from common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int, color_type: int, depth: int = 8, extra: bytes = b"",
               idat: bytes = b"\x78\x9c") -> bytes:
    """A PNG whose header claims a size; the image data is a stub (never decoded when the limits work)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
            + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def zero_png(width: int, height: int) -> bytes:
    """A real, fully decodable all-black 8-bit grey PNG, compressed row by row (small for any size)."""
    comp = zlib.compressobj(1)
    row = bytes(width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_header(width, height, 0, idat=body)


# -- masks get the image limits ------------------------------------------------------------------

def test_a_20000_square_mask_png_is_refused_from_its_header() -> None:
    bomb = png_header(20000, 20000, 0)  # the finding: a 389 KB PNG mask that decoded to 400 Mpx (1.1 GB)
    with pytest.raises(InvalidArgument, match="400000000 pixels > limit 40000000"):
        load_mask(bomb, "auto", 200, 200)


def test_mask_limits_are_the_callers() -> None:
    mask = cv2.imencode(".png", np.full((100, 100), 255, np.uint8))[1].tobytes()
    assert load_mask(mask, "binary", 10, 10).all()
    with pytest.raises(InvalidArgument, match="pixels > limit 9999"):
        load_mask(mask, "binary", 10, 10, max_pixels=9999)
    with pytest.raises(InvalidArgument, match="bytes > limit"):
        load_mask(mask, "binary", 10, 10, max_bytes=len(mask) - 1)
    with pytest.raises(InvalidArgument, match="bytes > limit"):
        load_mask(b"0 0.5 0.5 0.1 0.1\n" * 10, "yolo", 10, 10, max_bytes=100)


def test_mask_of_another_aspect_ratio_is_refused_before_decoding() -> None:
    # The header says 4000x2000; the data is a stub that would fail to decode: the aspect check comes first.
    with pytest.raises(InvalidArgument, match="another aspect ratio"):
        load_mask(png_header(4000, 2000, 0), "binary", 100, 100)


def test_box_text_has_a_box_count_cap() -> None:
    line = b"0 0.5 0.5 0.2 0.2\n"
    assert load_mask(line * 50, "yolo", 20, 20).any()
    with pytest.raises(InvalidArgument, match=f"{MAX_BOXES + 1} boxes > limit {MAX_BOXES}"):
        load_mask(line * (MAX_BOXES + 1), "auto", 20, 20)
    with pytest.raises(InvalidArgument, match="4 boxes > limit 3"):
        load_mask(b"1,1,5,5\n" * 4, "xyxy", 20, 20, max_boxes=3)
    with pytest.raises(InvalidArgument, match="boxes > limit"):
        boxes_to_mask([(0, 0, 1, 1)] * 5, 4, 4, max_boxes=4)


def test_many_full_image_boxes_cost_one_pass() -> None:
    # Before: one full-image fill per box (10000 x 4 Mpx). Now the boxes are summed, then integrated once.
    mask = boxes_to_mask([(0, 0, 2000, 2000)] * MAX_BOXES, 2000, 2000)
    assert mask.all()


# -- channels and bit depth from the header ------------------------------------------------------

@pytest.mark.parametrize(("color_type", "extra", "alpha"), [
    (6, b"", True),  # RGBA
    (4, b"", True),  # grey + alpha
    (3, _chunk(b"PLTE", bytes(6)) + _chunk(b"tRNS", b"\x00"), True),  # palette with transparency
    (2, _chunk(b"tRNS", bytes(6)), True),  # RGB with a transparent colour
    (2, b"", False),
    (0, b"", False),
])
def test_png_alpha_is_read_from_the_header(color_type: int, extra: bytes, alpha: bool) -> None:
    data = png_header(3000, 3000, color_type, extra=extra)
    assert read_header(data).alpha is alpha
    if alpha:  # refused from the header: the truncated data is never decoded
        with pytest.raises(BadImage, match="alpha channel"):
            decode_image(data, allow_alpha=False)


def test_alpha_of_bmp_and_tiff_is_read_from_the_header() -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    for ext in (".bmp", ".tiff", ".png"):
        data = cv2.imencode(ext, rgba)[1].tobytes()
        assert read_header(data).alpha, ext
        with pytest.raises(BadImage, match="alpha channel"):
            check_header(data, max_bytes=10**6, max_pixels=10**6, allow_alpha=False)
    for ext in (".bmp", ".tiff", ".png", ".jpg"):
        data = cv2.imencode(ext, rgba[:, :, :3])[1].tobytes()
        assert not read_header(data).alpha, ext


def test_16_bit_images_count_twice_against_the_decode_budget() -> None:
    rgb16 = png_header(5000, 5000, 2, depth=16)  # 25 Mpx < 40 Mpx, but a 150 MB decode buffer
    header = read_header(rgb16)
    assert header.sample_bytes == 2 and header.decoded_bytes == 5000 * 5000 * 6
    with pytest.raises(BadImage, match="too large to decode"):
        decode_image(rgb16)
    grey16 = cv2.imencode(".png", np.full((30, 40), 4000, np.uint16))[1].tobytes()
    assert read_header(grey16).sample_bytes == 2
    assert decode_image(grey16).shape == (30, 40, 3)  # small 16-bit images are still accepted
    tiff16 = cv2.imencode(".tiff", np.zeros((6, 7, 3), np.uint16))[1].tobytes()
    assert read_header(tiff16).sample_bytes == 2


def test_rgba_8_bit_images_get_three_quarters_of_the_pixel_limit() -> None:
    data = png_header(6000, 6000, 6)  # 36 Mpx: under the 40 Mpx limit, but 144 MB to decode
    with pytest.raises(BadImage, match="too large to decode"):
        decode_image(data, allow_alpha=True)



def tiled_tiff(pixels: np.ndarray, tile_width: int, tile_height: int, stored_bytes: int | None = None) -> bytes:
    """A classic little-endian, uncompressed, tiled TIFF of 8-bit grey (H, W) or RGB (H, W, 3) pixels.

    Edge tiles are padded with zeros. ``stored_bytes`` stores that many zero bytes per tile instead of the
    pixels: a hostile file need not carry its tiles to make the decoder allocate one.
    """
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    across, down = -(-width // tile_width), -(-height // tile_height)
    tiles = []
    for ty in range(down if stored_bytes is None else 0):
        for tx in range(across):
            tile = np.zeros((tile_height, tile_width, samples), np.uint8)
            part = pixels[ty * tile_height:(ty + 1) * tile_height, tx * tile_width:(tx + 1) * tile_width]
            tile[:part.shape[0], :part.shape[1]] = part.reshape(part.shape[0], part.shape[1], samples)
            tiles.append(tile.tobytes())
    tiles = tiles if stored_bytes is None else [bytes(stored_bytes)] * (across * down)
    short, long_ = 3, 4
    entries = 11
    extra = 8 + 2 + 12 * entries + 4  # arrays (bits per sample, tile offsets / counts) follow the directory
    bits_at, offsets_at = extra, extra + 8
    counts_at = offsets_at + 4 * len(tiles)
    data_at = counts_at + 4 * len(tiles)
    offsets = [data_at + sum(len(t) for t in tiles[:i]) for i in range(len(tiles))]

    def entry(tag: int, typ: int, values: list[int], at: int) -> bytes:
        if len(values) * (2 if typ == short else 4) <= 4:
            return struct.pack("<HHI", tag, typ, len(values)) + struct.pack("<" + ("H" if typ == short else "I")
                                                                             * len(values), *values).ljust(4, b"\0")
        return struct.pack("<HHII", tag, typ, len(values), at)

    ifd = b"".join([
        entry(256, long_, [width], 0), entry(257, long_, [height], 0), entry(258, short, [8] * samples, bits_at),
        entry(259, short, [1], 0), entry(262, short, [1 if samples == 1 else 2], 0), entry(277, short, [samples], 0),
        entry(284, short, [1], 0), entry(322, long_, [tile_width], 0), entry(323, long_, [tile_height], 0),
        entry(324, long_, offsets, offsets_at), entry(325, long_, [len(t) for t in tiles], counts_at)])
    bits = struct.pack("<4H", *[8] * samples, *[0] * (4 - samples))
    arrays = struct.pack(f"<{len(tiles)}I", *offsets) + struct.pack(f"<{len(tiles)}I", *(len(t) for t in tiles))
    return b"II*\0" + struct.pack("<IH", 8, entries) + ifd + bytes(4) + bits + arrays + b"".join(tiles)


def test_tiled_tiffs_decode_and_their_tile_size_is_read() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)  # 3x2 tiles, the edge ones padded
    data = tiled_tiff(rgb, 32, 32)
    header = read_header(data)
    assert (header.tile_width, header.tile_height, header.tile_bytes) == (32, 32, 32 * 32 * 4)
    assert np.array_equal(decode_image(data), rgb)
    small = rng.integers(0, 256, (10, 12), dtype=np.uint8)  # a small image in the usual 256x256 tiles
    decoded = decode_image(tiled_tiff(small, 256, 256), max_pixels=1_000_000)
    assert np.array_equal(decoded, np.dstack([small] * 3))
    assert read_header(cv2.imencode(".tiff", rgb)[1].tobytes()).tile_bytes == 0  # OpenCV writes strips


def test_tiff_tiles_larger_than_the_decode_budget_are_refused_before_decoding() -> None:
    """Found by tests/fuzz: OpenCV allocates a whole tile whatever the image size, 1 GB for this 1x1 image."""
    bomb = tiled_tiff(np.zeros((1, 1), np.uint8), 16384, 16368, stored_bytes=1)
    probe = (
        "import resource, sys\n"
        "from common.errors import BadImage\n"
        "from common.images import decode_image\n"
        "data = sys.stdin.buffer.read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    decode_image(data)\n"
        "except BadImage:\n"
        "    pass\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], input=bomb, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert int(done.stdout) < 100, f"decoding a {len(bomb)}-byte tile bomb grew the peak RSS by {int(done.stdout)} MB"
    assert len(bomb) < 300 and read_header(bomb).tile_bytes == 16384 * 16368 * 4
    with pytest.raises(BadImage, match="16384x16368 TIFF tiles need 1072693248 bytes each > limit 120000000"):
        decode_image(bomb)
    with pytest.raises(BadImage, match="TIFF tiles need"):  # the budget follows the caller's pixel limit
        check_header(tiled_tiff(np.zeros((8, 8), np.uint8), 1024, 1024, stored_bytes=1), max_bytes=10**6,
                     max_pixels=10**6)


def test_a_tiff_tag_given_twice_is_refused() -> None:
    """libtiff decoded the first ImageWidth/ImageLength of this 24 KB file (5000x5000), the header check the last (1x1)."""
    side = 5000
    strip = zlib.compress(bytes(side * side), 9)
    short, long_ = 3, 4
    entries = [(256, long_, side), (257, long_, side), (258, short, 8), (259, short, 8), (262, short, 1),
               (273, long_, 8 + 2 + 12 * 10 + 4), (277, short, 1), (279, long_, len(strip)),
               (256, long_, 1), (257, long_, 1)]
    ifd = b"".join(struct.pack("<HHII", tag, typ, 1, value) for tag, typ, value in entries)
    data = b"II*\0" + struct.pack("<IH", 8, len(entries)) + ifd + bytes(4) + strip
    with pytest.raises(BadImage, match="TIFF tag 256 appears twice"):
        decode_image(data, max_pixels=1_000_000)

# -- the OpenCV backstop ---------------------------------------------------------------------------

def test_opencv_pixel_backstop_is_set_on_import() -> None:
    """OpenCV's own limit (default 2^30 pixels) is lowered to 100 Mpx for any decode, ours or not."""
    probe = (
        "import os, sys, numpy as np\n"
        "import common.images\n"
        "import cv2\n"
        "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])\n"
        "data = np.frombuffer(sys.stdin.buffer.read(), np.uint8)\n"
        "try:\n"
        "    print(cv2.imdecode(data, cv2.IMREAD_UNCHANGED) is None)\n"
        "except cv2.error as exc:\n"
        "    print('CV_IO_MAX_IMAGE_PIXELS' in str(exc))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    env["PYTHONPATH"] = str(ROOT)
    bomb = zero_png(10500, 10000)  # 105 Mpx of valid data: decodes (105 MB) without the backstop
    done = subprocess.run([sys.executable, "-c", probe], input=bomb, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["100000000", "True"]


# -- settings ----------------------------------------------------------------------------------------

def test_the_current_directory_is_no_default_data_root(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZDM_DATA_ROOTS", raising=False)
    roots = [p.resolve() for p in CommonSettings().data_roots]
    assert tmp_path.resolve() not in roots and roots
