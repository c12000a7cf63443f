"""Cost of refusing hostile inputs: wall time and peak RSS growth per case, each in a fresh subprocess.

    python bench/limits.py              # this tree
    PYTHONPATH=/other/checkout python bench/limits.py   # e.g. a checkout before the limits, as a baseline

Cases (all small files): a 20000x20000 PNG mask (the issue's 389 KB finding, made of real zero rows), an
RGBA 16-bit PNG at 6000x6000 (36 Mpx, under the pixel limit; the issue's 280 KB file) sent where alpha
is refused, a PNG declaring a 2 GB chunk and a 1x1 TIFF in 16384x16368 tiles (both found by tests/fuzz),
and 10000 full-image boxes.
Prints one line per case, then one JSON object.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys, time, numpy as np
case = sys.argv[1]
data = sys.stdin.buffer.read()
from common.images import decode_image
from common.masks import load_mask, boxes_to_mask
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    if case == "mask":
        load_mask(data, "auto", 200, 200)
    elif case == "boxes":
        boxes_to_mask([(0, 0, 2000, 2000)] * 10000, 2000, 2000)
    else:
        decode_image(data, allow_alpha=False)
    outcome = "accepted"
except Exception as exc:
    outcome = type(exc).__name__
ms = (time.perf_counter() - start) * 1000
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(outcome, round(ms, 1), round(grow, 1))
"""


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, color_type: int, depth: int, body: bytes) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _zero_rows(width: int, height: int, bytes_per_pixel: int) -> bytes:
    comp = zlib.compressobj(9)
    row = bytes(1 + width * bytes_per_pixel)
    return b"".join(comp.compress(row) for _ in range(height)) + comp.flush()


def cases() -> dict[str, tuple[str, bytes]]:
    chunk_bomb = _png(8, 8, 0, 8, b"")[:33] + struct.pack(">I", 0x8220001F) + b"IDAT" + bytes(40)
    return {
        "mask PNG 20000x20000": ("mask", _png(20000, 20000, 0, 8, _zero_rows(20000, 20000, 1))),
        "RGBA16 PNG 6000x6000": ("image", _png(6000, 6000, 6, 16, _zero_rows(6000, 6000, 8))),
        "PNG chunk claiming 2 GB": ("image", chunk_bomb),
        "1x1 TIFF, 1 GB tiles": ("image", (ROOT / "tests" / "corpus" / "files" / "tile-bomb.tiff").read_bytes()),
        "10000 full-image boxes": ("boxes", b""),
    }


def main() -> None:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    results = {}
    for label, (case, data) in cases().items():
        done = subprocess.run([sys.executable, "-c", CHILD, case], input=data, capture_output=True, env=env, timeout=600,
                              cwd="/")  # not the repository: -c puts the current directory first on sys.path
        outcome, ms, grow = done.stdout.decode().split()
        results[label] = {"bytes": len(data), "outcome": outcome, "ms": float(ms), "rss_growth_mb": float(grow)}
        print(f"{label:28s} {len(data):>9d} B  {outcome:16s} {float(ms):9.1f} ms  +{float(grow):8.1f} MB", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
