"""Per-file facts for the dataset check: content hash, header facts, a perceptual hash; cached per dataset.

One pass reads each file's bytes once: SHA-256, format, size, channels and bit depth from the header,
and (``decode``) a reduced decode for grey-in-colour detection and the perceptual hash. JPEG decodes
in the DCT domain at 1/2, 1/4 or 1/8 scale, so a 300 px image costs a 75 px decode.

Perceptual hash (pHash-style): the image is reduced to 64 x 64 grey, its 2-D DCT's 16 x 16 lowest
frequencies (DC left out) are compared with their median: 255 bits, half of them set.

Facts are cached in the cache directory under the dataset's fingerprint (paths, sizes, mtimes), one
file per level (header / full); full facts also answer a header-level request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from common.errors import BadImage
from common.images import OPENCV_PIXEL_BACKSTOP, check_header

log = logging.getLogger(__name__)

FACTS_VERSION = 1  # bump when FileFacts or the hash changes: old cache entries are then ignored
HASH_SIDE = 64
DCT_KEEP = 16
HASH_BITS = DCT_KEEP * DCT_KEEP - 1  # 255 (the DC term says nothing about structure)
GREY_TOLERANCE = 3  # JPEG chroma rounding keeps "grey" colour pixels within a few levels
MAX_FILE_BYTES = 100_000_000


@dataclass
class FileFacts:
    """What one file is, found without a full decode where the format allows."""

    sha256: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    channels: int = 0  # as stored (a palette PNG counts as 3)
    bit_depth: int = 0  # bits per sample
    grey_colour: bool = False  # 3+ channels whose pixels are all grey
    phash: str = ""  # hex of the packed 256-bit hash; empty when unreadable or not decoded
    error: str = ""
    decoded: bool = False  # pixels were decoded (else: header facts and the content hash only)


def _png_depth(data: bytes) -> tuple[int, int]:
    bit_depth, colour_type = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type, 0)
    return channels, (8 if colour_type == 3 else bit_depth)


def _jpeg_depth(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[i + 9], data[i + 4]  # components, sample precision
        i += 2 + length
    return 0, 0


def _bmp_depth(data: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", data[14:18])
    bpp = struct.unpack("<H", data[24:26] if dib == 12 else data[28:30])[0]
    return {1: (1, 1), 4: (3, 8), 8: (3, 8), 16: (3, 5), 24: (3, 8), 32: (4, 8)}.get(bpp, (0, 0))


_DEPTH_READERS = {"png": _png_depth, "jpeg": _jpeg_depth, "bmp": _bmp_depth}


def perceptual_hash(grey: np.ndarray) -> np.ndarray:
    """The 255-bit DCT hash of a grey uint8 image, packed into 4 uint64 words (the last bit is 0)."""
    small = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:DCT_KEEP, :DCT_KEEP].ravel()[1:]
    bits = np.zeros(DCT_KEEP * DCT_KEEP, dtype=bool)
    bits[:HASH_BITS] = low > np.median(low)
    return np.packbits(bits).view(np.uint64)


def _reduction(width: int, height: int, fmt: str) -> int:
    """The largest JPEG DCT-domain reduction that keeps the hash's input at least HASH_SIDE pixels."""
    if fmt != "jpeg":
        return 1
    return next((r for r in (8, 4, 2) if min(width, height) // r >= HASH_SIDE), 1)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def scan_file(path: Path, decode: bool = True) -> FileFacts:
    """Facts of one file; an unreadable one gets ``error`` set (and no hash), never an exception.

    Without ``decode`` only the bytes are read: content hash and header facts (TIFF channels and
    depth stay 0: only its decoder knows them), and truncation is caught where the format has an
    end marker (JPEG EOI, PNG IEND).
    """
    facts = FileFacts()
    try:
        data = path.read_bytes()
    except OSError as exc:
        facts.error = f"cannot read: {exc.strerror or exc}"
        return facts
    facts.sha256 = hashlib.sha256(data).hexdigest()
    try:
        # Every header-level limit (pixels, decode buffer, TIFF tiles) before anything decodes the file.
        header = check_header(data, max_bytes=MAX_FILE_BYTES, max_pixels=OPENCV_PIXEL_BACKSTOP, name=path.name)
        facts.format, facts.width, facts.height = header.format, header.width, header.height
        if header.format == "png" and b"IEND" not in data[-12:]:
            raise BadImage("PNG is truncated (no IEND chunk at the end)")
        reader = _DEPTH_READERS.get(header.format)
        if reader is not None:
            facts.channels, facts.bit_depth = reader(data)
        if not decode:
            return facts
        facts.decoded = True
        buf = np.frombuffer(data, dtype=np.uint8)
        if reader is None or facts.channels == 0:  # TIFF (or an odd header): ask the decoder
            full = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            if full is None:
                raise BadImage("could not be decoded")
            facts.channels = 1 if full.ndim == 2 else full.shape[2]
            facts.bit_depth = full.dtype.itemsize * 8
        colour = cv2.imdecode(buf, _REDUCED[_reduction(header.width, header.height, header.format)])
        if colour is None or colour.size == 0:
            raise BadImage("could not be decoded (truncated or corrupt)")
    except (BadImage, cv2.error, struct.error, IndexError) as exc:
        facts.error = exc.message if isinstance(exc, BadImage) else f"bad header: {exc}"
        return facts
    if facts.channels >= 3:
        spread = cv2.absdiff(colour[:, :, 0], colour[:, :, 1]).max(), cv2.absdiff(colour[:, :, 1], colour[:, :, 2]).max()
        facts.grey_colour = bool(max(spread) <= GREY_TOLERANCE)
    facts.phash = perceptual_hash(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)).tobytes().hex()
    return facts


def relative_path(root: Path, path: Path) -> str:
    """``path.relative_to(root).as_posix()`` without pathlib's parsing (which dominated a cached check)."""
    prefix = str(root).rstrip(os.sep) + os.sep
    text = str(path)
    if not text.startswith(prefix):
        raise ValueError(f"{path} is not under {root}")
    return text[len(prefix):].replace(os.sep, "/")


def _cache_file(cache_dir: Path, fingerprint: str, decode: bool) -> Path:
    level = "full" if decode else "header"
    return cache_dir / f"dataset-check-v{FACTS_VERSION}-{level}-{fingerprint[:32]}.json"


def _cached(file: Path, rels: list[str]) -> dict[str, FileFacts] | None:
    if not file.is_file():
        return None
    try:
        cached = json.loads(file.read_text())
        if set(cached) >= set(rels):
            return {r: FileFacts(**cached[r]) for r in rels}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable dataset-check cache %s: %s", file, exc)
    return None


def scan_files(root: Path, paths: Sequence[Path], *, fingerprint: str, cache_dir: Path | None,
               decode: bool = True, workers: int | None = None) -> tuple[dict[str, FileFacts], bool]:
    """Facts for every path (keyed by the path relative to ``root``); True when they came from the cache.

    A header-level request (``decode=False``) is also answered by cached full facts.
    """
    rels = [relative_path(root, p) for p in paths]
    if cache_dir is not None:
        for level in (True, False) if not decode else (True,):
            found = _cached(_cache_file(cache_dir, fingerprint, level), rels)
            if found is not None:
                return found, True
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        facts = dict(zip(rels, pool.map(lambda p: scan_file(p, decode), paths), strict=True))
    file = _cache_file(cache_dir, fingerprint, decode) if cache_dir is not None else None
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".dataset-check-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({r: asdict(f) for r, f in facts.items()}, fh)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return facts, False
