"""Write the malformed-file corpus (tests/corpus/files/) and its expectations (expected.json).

Every file is small (a few KB at most) and crafted by hand or cut from a tiny real image, so the corpus
is checked in and also seeds the decode fuzzer (tests/fuzz/fuzz_decode.py). Rerun after adding a case:
``python tests/corpus/make_corpus.py``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, color_type: int, depth: int = 8, extra: bytes = b"", idat: bytes = b"\x78\x9c") -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
            + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def tiff_ifd(entries: list[tuple[int, int, int]], data: bytes) -> bytes:
    """A classic little-endian TIFF whose one IFD holds (tag, type, value) entries of one inline value each."""
    ifd = b"".join(struct.pack("<HHII", tag, typ, 1, value) for tag, typ, value in sorted(entries))
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + ifd + bytes(4) + data


def encoded(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def cases() -> dict[str, tuple[str, str, bytes, str]]:
    """name -> (kind: image | mask, mask format or "", bytes, regex the error must match)."""
    rng = np.random.default_rng(12)
    picture = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    jpeg = encoded(".jpg", picture)
    png_ok = encoded(".png", picture)
    bmp = encoded(".bmp", picture)
    tiff = encoded(".tiff", picture)
    corrupt = bytearray(png_ok)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 32] = bytes(32)
    two_components = bytearray(jpeg)
    sof = two_components.index(b"\xff\xc0")
    two_components[sof + 9] = 2
    dnl = bytearray(jpeg)
    dnl[sof + 5: sof + 7] = b"\x00\x00"
    tiff_far = bytearray(tiff)
    tiff_far[4:8] = struct.pack("<I", 1 << 30)
    square = encoded(".png", np.full((8, 8), 255, np.uint8))
    short, long_ = 3, 4
    # A 1x1 grey image in 16384x16368 tiles (one byte stored at offset 8): OpenCV allocated a 1 GB tile buffer.
    tile_bomb = tiff_ifd([(256, short, 1), (257, short, 1), (258, short, 8), (259, short, 1), (262, short, 1),
                          (322, long_, 16384), (323, long_, 16368), (324, long_, 8), (325, long_, 1)], b"")
    return {
        "empty.bin": ("image", "", b"", "empty"),
        "random.bin": ("image", "", rng.integers(0, 256, 512, dtype=np.uint8).tobytes(), "unsupported format"),
        "gif.gif": ("image", "", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "unsupported format"),
        "truncated.jpg": ("image", "", jpeg[: len(jpeg) // 2], "truncated"),
        "header-only.jpg": ("image", "", jpeg[:150], "JPEG"),
        "two-components.jpg": ("image", "", bytes(two_components), "2 colour components"),
        "dnl-height.jpg": ("image", "", bytes(dnl), "DNL"),
        "corrupt-data.png": ("image", "", bytes(corrupt), "truncated or corrupt"),
        "bomb-30000.png": ("image", "", png(30000, 30000, 2), "900000000 pixels"),
        "zero-width.png": ("image", "", png(0, 10, 2), "empty size"),
        "bad-colour-type.png": ("image", "", png(10, 10, 5), "colour type"),
        "rgba-header.png": ("image", "", png(3000, 3000, 6), "alpha channel"),
        "palette-trns.png": ("image", "", png(3000, 3000, 3, extra=chunk(b"PLTE", bytes(6)) + chunk(b"tRNS", b"\x00")),
                             "alpha channel"),
        "rgb16-5000.png": ("image", "", png(5000, 5000, 2, depth=16), "too large to decode"),
        # Found by tests/fuzz: OpenCV allocated the declared 2 GB of this 88-byte file's IDAT chunk.
        "chunk-length-bomb.png": ("image", "", png(8, 8, 0)[:33] + struct.pack(">I", 0x8220001F) + b"IDAT" + bytes(40),
                                  "past the end"),
        "mask-chunk-length-bomb.png": ("mask", "binary", png(8, 8, 0)[:33] + struct.pack(">I", 0x8220001F) + b"IDAT"
                                       + bytes(40), "past the end"),
        "no-ihdr.png": ("image", "", b"\x89PNG\r\n\x1a\n" + chunk(b"IEND", b""), "IHDR"),
        "truncated.bmp": ("image", "", bmp[:20], "BMP"),
        "rgba.bmp": ("image", "", encoded(".bmp", np.dstack([picture, picture[:, :, :1]])), "alpha channel"),
        "float.tiff": ("image", "", encoded(".tiff", np.zeros((4, 4), np.float32)), "32 bits per sample"),
        "ifd-outside.tiff": ("image", "", bytes(tiff_far), "outside the file"),
        "truncated.tiff": ("image", "", tiff[:12], "TIFF"),
        # Found by tests/fuzz (libFuzzer out-of-memory): the tile size is not bounded by the image size.
        "tile-bomb.tiff": ("image", "", tile_bomb, "TIFF tiles need 1072693248 bytes"),
        "mask-tile-bomb.tiff": ("mask", "binary", tile_bomb, "TIFF tiles need"),
        # libtiff read the first ImageWidth / ImageLength, the header check the last: 1x1 checked, 10000x10000 decoded.
        "duplicate-size.tiff": ("image", "", tiff_ifd([(256, long_, 10000), (257, long_, 10000), (258, short, 8),
                                                      (262, short, 1), (273, long_, 8), (256, short, 1), (257, short, 1)],
                                                     b""), "appears twice"),
        "mask-bomb-20000.png": ("mask", "auto", png(20000, 20000, 0), "pixels > limit"),
        "mask-aspect.png": ("mask", "binary", png(4000, 1000, 0), "aspect ratio"),
        "mask-garbage.png": ("mask", "binary", b"\x89PNG\r\n\x1a\n garbage", "not a valid PNG"),
        "mask-colour-of-grey.png": ("mask", "color", square, "3 channels"),
        "mask-not-utf8.txt": ("mask", "auto", b"\xff\xfe\x00\x81 nothing", "neither a decodable image nor UTF-8"),
        "yolo-nan.txt": ("mask", "yolo", b"0 nan 0.5 0.2 0.2\n", "non-finite"),
        "yolo-out-of-range.txt": ("mask", "yolo", b"0 0.5 0.5 1.5 0.2\n", "normalised"),
        "yolo-fields.txt": ("mask", "yolo", b"0 0.5 0.5 0.2\n", "5 fields"),
        "yolo-class.txt": ("mask", "yolo", b"-1 0.5 0.5 0.2 0.2\n", "class"),
        "xyxy-inverted.txt": ("mask", "xyxy", b"5,5,1,1\n", "inverted"),
        "xyxy-words.txt": ("mask", "xyxy", b"a,b,c,d\n", "not numeric"),
        "mixed-fields.txt": ("mask", "auto", b"1 2 3 4\n0 0.5 0.5 0.1 0.1\n", "cannot tell"),
        "huge-numbers.txt": ("mask", "xyxy", b"1e308,1e308,1e309,1e309\n", "non-finite"),
    }


def main() -> None:
    FILES.mkdir(exist_ok=True)
    expected = {}
    for name, (kind, fmt, data, error) in cases().items():
        (FILES / name).write_bytes(data)
        expected[name] = {"kind": kind, "format": fmt, "error": error}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(expected)} files to {FILES}")


if __name__ == "__main__":
    main()
