"""Dataset check: what a dataset holds and what is wrong with it, before anything is trained on it.

One pass over the files (bytes read once, a reduced decode for the perceptual hash) gives per file:
content hash (SHA-256), format, size, channels and bit depth from the header, whether colour pixels
are really grey, and a 255-bit perceptual hash. The report built from those facts has class counts
and imbalance per split, image size / aspect ratio / channel / bit-depth distributions, unreadable
files, and exact and near-duplicate groups within and across train / val / test, with conflicting
labels flagged. The val split is the one training will carve out (same function, seed and fraction).

Per-file facts are cached in the cache directory under the dataset's fingerprint (paths, sizes,
mtimes), so the worker's second look at a dataset the servicer checked at submit time is cheap.

Near-duplicates: pHash-style — the image is reduced to 64 x 64 grey, its 2-D DCT's 16 x 16 lowest
frequencies (DC left out) are compared with their median. Photos of identical parts look alike, so
the threshold is tight: on casting, pairs at 6 or more differing bits were different parts
(docs/trainer.md). Candidate pairs come from banding (a pair within ``t`` bits agrees exactly on at
least one of ``t + 1`` bands), so the search grows with the number of images, not its square.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.datasets.imagefolder import Sample, dataset_fingerprint, discover, split_train_val
from common.errors import BadImage, FailedPrecondition, InvalidArgument
from common.images import read_header

log = logging.getLogger(__name__)

FACTS_VERSION = 1  # bump when FileFacts or the hash changes: old cache entries are then ignored
HASH_SIDE = 64
DCT_KEEP = 16
HASH_BITS = DCT_KEEP * DCT_KEEP - 1  # 255 (the DC term says nothing about structure)
NEAR_DUPLICATE_BITS = 2
MAX_LISTED_GROUPS = 100
MAX_LISTED_UNREADABLE = 100
MAX_LISTED_SIZES = 20
IMBALANCE_WARNING = 3.0  # largest / smallest train class
GREY_TOLERANCE = 3  # JPEG chroma rounding keeps "grey" colour pixels within a few levels
MAX_FILE_BYTES = 100_000_000
SPLITS = ("train", "val", "test")


# -- per-file facts ------------------------------------------------------------------------------

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
        if len(data) > MAX_FILE_BYTES:
            raise BadImage(f"{len(data)} bytes is more than {MAX_FILE_BYTES}")
        header = read_header(data, name=path.name)
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


def _relative(root: Path, path: Path) -> str:
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
    rels = [_relative(root, p) for p in paths]
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


# -- duplicates ----------------------------------------------------------------------------------

def near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) with i < j whose hashes differ in at most ``max_bits`` bits.

    ``hashes``: (N, W) uint64. Pigeonhole banding: split the bits into ``max_bits + 1`` bands; a pair
    within ``max_bits`` agrees exactly on at least one band, so only pairs sharing a band are compared.
    """
    n = len(hashes)
    if n < 2:
        return []
    bits = np.unpackbits(hashes.view(np.uint8), axis=1)
    bands = np.array_split(np.arange(bits.shape[1]), max_bits + 1)
    candidates: set[tuple[int, int]] = set()
    for band in bands:
        keys = np.packbits(bits[:, band], axis=1)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        for members, count in zip(np.split(order, np.cumsum(counts)[:-1]), counts, strict=True):
            if count > 1:
                candidates.update((int(a), int(b)) for k, a in enumerate(members) for b in members[k + 1:])
    out: list[tuple[int, int, int]] = []
    for i, j in sorted(candidates):
        distance = int(np.bitwise_count(hashes[i] ^ hashes[j]).sum())
        if distance <= max_bits:
            out.append((i, j, distance))
    return out


def _groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (size > 1) of the pair graph, each sorted, in order of their first member."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


# -- the report ----------------------------------------------------------------------------------

@dataclass
class Entry:
    path: str  # relative to the dataset root
    split: str
    label: int


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"min": 0.0, "max": 0.0, "median": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "max": float(arr.max()), "median": float(np.median(arr))}


def _value_counts(counter: Counter, limit: int | None = None) -> list[dict[str, Any]]:
    return [{"value": str(v), "count": c} for v, c in counter.most_common(limit)]


class DuplicateIndex:
    """Duplicate groups of one kind (exact or near) over the dataset's entries."""

    def __init__(self, entries: Sequence[Entry], groups: list[list[int]], classes: Sequence[str], *, exact: bool,
                 distances: dict[tuple[int, int], int] | None = None) -> None:
        self.entries = entries
        self.groups = groups
        self.classes = classes
        self.exact = exact
        self.distances = distances or {}

    def _splits(self, group: list[int]) -> set[str]:
        return {self.entries[i].split for i in group}

    def leaked(self, split: str) -> set[str]:
        """Paths in ``split`` that have a duplicate in an earlier split (val: train; test: train or val)."""
        earlier = set(SPLITS[:SPLITS.index(split)])
        out: set[str] = set()
        for group in self.groups:
            if self._splits(group) & earlier:
                out.update(self.entries[i].path for i in group if self.entries[i].split == split)
        return out

    def summary(self) -> dict[str, Any]:
        conflicting = [g for g in self.groups if len({self.entries[i].label for i in g}) > 1]
        return {
            "groups": len(self.groups),
            "redundant_files": sum(len(g) - 1 for g in self.groups),
            "cross_split_groups": sum(1 for g in self.groups if len(self._splits(g)) > 1),
            "conflicting_groups": len(conflicting),
            "val_files_in_train": len(self.leaked("val")),
            "test_files_in_train": len(self.leaked("test")),
        }

    def rank(self, group: list[int]) -> tuple[int, int]:
        """Sort key: conflicting labels first, then groups spanning more splits."""
        return (-len({self.entries[i].label for i in group}), -len(self._splits(group)))

    def describe(self, group: list[int]) -> dict[str, Any]:
        distance = max((self.distances.get((a, b), 0) for a in group for b in group if a < b), default=0)
        return {
            "exact": self.exact,
            "max_distance": distance,
            "files": [{"path": self.entries[i].path, "split": self.entries[i].split,
                       "class_name": self.classes[self.entries[i].label]} for i in group],
            "cross_split": len(self._splits(group)) > 1,
            "conflicting_labels": len({self.entries[i].label for i in group}) > 1,
        }


def _listed(indexes: Sequence[DuplicateIndex], limit: int) -> list[dict[str, Any]]:
    """Groups of every kind, conflicting and cross-split ones first, at most ``limit``."""
    ranked = sorted(((index.rank(g), k, g) for k, index in enumerate(indexes) for g in index.groups),
                    key=lambda item: (item[0], item[1], item[2][0]))
    return [indexes[k].describe(g) for _, k, g in ranked[:limit]]


@dataclass
class DatasetCheck:
    """A finished check: ``report`` is a proto3-JSON DatasetReport dict; the rest is for the trainer."""

    report: dict[str, Any]
    test_duplicates: frozenset[str]  # test paths (relative) with a copy or near copy in train / val
    errors: list[str]  # problems that make training pointless (FAILED_PRECONDITION)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise FailedPrecondition("dataset check: " + "; ".join(self.errors))


def _entries(root: Path, splits: dict[str, list[Sample]]) -> list[Entry]:
    return [Entry(_relative(root, Path(s.path)), name, int(s.label))
            for name, samples in splits.items() for s in samples]


def check_dataset(root: Path, *, seed: int = 0, val_fraction: float = 0.1, cache_dir: Path | None = None,
                  decode: bool = True, near_bits: int = NEAR_DUPLICATE_BITS, workers: int | None = None) -> DatasetCheck:
    """Check an ImageFolder root with the train / val split training would use.

    ``decode=False`` is the header-level pass SubmitJob makes (bytes, content hash and headers only:
    about a second for casting's 7.3k files, unless full facts are cached); near-duplicates, grey
    detection and undecodable pixels need ``decode`` (the worker's pass when the job starts).

    Raises:
        InvalidArgument: the layout itself is wrong (see :func:`discover`), or a class has no readable image.
    """
    started = time.perf_counter()
    root = Path(root)
    folder = discover(root)
    train, val = split_train_val(folder.train, val_fraction=val_fraction, seed=seed)
    splits = {"train": train, "val": val, "test": folder.test}
    entries = _entries(root, splits)
    fingerprint = dataset_fingerprint(root)
    facts_by_path, cached = scan_files(root, [root / e.path for e in entries], fingerprint=fingerprint,
                                       cache_dir=cache_dir, decode=decode, workers=workers)
    facts = [facts_by_path[e.path] for e in entries]
    decoded = all(f.decoded or f.error for f in facts)
    classes = folder.classes
    warnings: list[str] = []
    errors: list[str] = []

    split_rows = []
    for name in SPLITS:
        counts = Counter(e.label for e in entries if e.split == name)
        if not counts and name == "test":
            continue
        split_rows.append({"split": name, "images": sum(counts.values()),
                           "classes": [{"class_name": c, "count": counts.get(k, 0)} for k, c in enumerate(classes)]})
    labelled = Counter(e.label for e in entries if e.split != "test")  # train/ before the val split
    train_counts = [labelled.get(k, 0) for k in range(len(classes))]
    imbalance = max(train_counts) / max(1, min(train_counts))
    if imbalance >= IMBALANCE_WARNING:
        smallest = classes[int(np.argmin(train_counts))]
        warnings.append(f"classes are imbalanced: the largest class in train/ has {imbalance:.1f}x the images of "
                        f"the smallest ({smallest!r}, {min(train_counts)})")
    if not folder.test:
        warnings.append("no test/ split: test metrics will not be reported")

    readable = [i for i, f in enumerate(facts) if not f.error]
    unreadable = [{"path": entries[i].path, "split": entries[i].split, "class_name": classes[entries[i].label],
                   "reason": f.error} for i, f in enumerate(facts) if f.error]
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable file(s) will be skipped, e.g. {unreadable[0]['path']}: "
                        f"{unreadable[0]['reason']}")
    for k, cls in enumerate(classes):
        for name in ("train", "test"):
            members = [i for i, e in enumerate(entries) if e.label == k and (e.split == name or
                                                                             (name == "train" and e.split == "val"))]
            if members and not any(not facts[i].error for i in members):
                raise InvalidArgument(f"class {cls!r} has no readable image in {name}/ ({len(members)} unreadable)")

    sizes = Counter(f"{facts[i].width}x{facts[i].height}" for i in readable)
    if len(sizes) > 1:
        warnings.append(f"images come in {len(sizes)} sizes (most common {sizes.most_common(1)[0][0]}); "
                        "they are all resized to the model's square input")
    channels = Counter(facts[i].channels for i in readable)
    depths = Counter(facts[i].bit_depth for i in readable)
    grey_colour = sum(1 for i in readable if facts[i].grey_colour)
    if len(channels) > 1:
        warnings.append(f"channel counts differ between images: {dict(sorted(channels.items()))}")
    if depths.keys() - {8}:
        warnings.append(f"bit depths other than 8: {dict(sorted(depths.items()))} (scaled to 8 bits for the model)")

    by_sha: dict[str, list[int]] = {}
    for i in readable:
        by_sha.setdefault(facts[i].sha256, []).append(i)
    exact = DuplicateIndex(entries, sorted((g for g in by_sha.values() if len(g) > 1), key=lambda g: g[0]), classes,
                           exact=True)
    hashed = [i for i in readable if facts[i].phash]
    hashes = np.stack([np.frombuffer(bytes.fromhex(facts[i].phash), dtype=np.uint64) for i in hashed]) \
        if hashed else np.zeros((0, 4), np.uint64)
    pairs = [(hashed[a], hashed[b], d) for a, b, d in near_pairs(hashes, near_bits)
             if facts[hashed[a]].sha256 != facts[hashed[b]].sha256]  # exact copies are reported as such
    near = DuplicateIndex(entries, _groups(len(entries), [(a, b) for a, b, _ in pairs]), classes, exact=False,
                          distances={(a, b): d for a, b, d in pairs})
    exact_summary, near_summary = exact.summary(), near.summary()
    for kind, summary in (("exact", exact_summary), ("near", near_summary)):
        if summary["groups"]:
            warnings.append(f"{summary['groups']} group(s) of {kind} duplicates ({summary['redundant_files']} redundant "
                            f"files; {summary['test_files_in_train']} test and {summary['val_files_in_train']} val "
                            "files also in an earlier split)")
        if summary["conflicting_groups"]:
            warnings.append(f"{summary['conflicting_groups']} {kind}-duplicate group(s) carry conflicting labels")

    test_dups = frozenset(exact.leaked("test") | near.leaked("test"))
    val_dups = exact.leaked("val") | near.leaked("val")
    test_total = sum(1 for e in entries if e.split == "test")
    if test_total and len(test_dups) == test_total:
        errors.append(f"every one of the {test_total} test images is a copy of a train / val image: the test split "
                      "measures nothing (add fresh images or remove test/)")
    if val and len(val_dups) == len(val):
        errors.append(f"every one of the {len(val)} validation images is a copy of a training image: validation "
                      "measures nothing (the train split holds duplicates of each image)")
    report = {
        "dataset_path": str(root),
        "classes": list(classes),
        "splits": split_rows,
        "imbalance_ratio": imbalance,
        "sizes": _value_counts(sizes, MAX_LISTED_SIZES),
        "width": _spread([facts[i].width for i in readable]),
        "height": _spread([facts[i].height for i in readable]),
        "aspect_ratio": _spread([facts[i].width / facts[i].height for i in readable]),
        "channels": _value_counts(channels),
        "bit_depths": _value_counts(depths),
        "formats": _value_counts(Counter(facts[i].format for i in readable)),
        "grey_colour_images": grey_colour,
        "unreadable_count": len(unreadable),
        "unreadable": unreadable[:MAX_LISTED_UNREADABLE],
        "exact_duplicates": exact_summary,
        "near_duplicates": near_summary,
        "duplicate_groups": _listed([exact, near], MAX_LISTED_GROUPS),
        "near_duplicate_bits": near_bits,
        "test_after_dedup": test_total - len(test_dups),
        "warnings": warnings,
        "errors": errors,
        "seconds": time.perf_counter() - started,
        "cached": cached,
        "decoded": decoded,
        "images": len(entries),
        "seed": seed,
        "val_fraction": val_fraction,
    }
    log.info("dataset check of %s: %d images in %.2fs%s, %d warning(s), %d error(s)", root, len(entries),
             report["seconds"], " (cached facts)" if cached else "", len(warnings), len(errors))
    return DatasetCheck(report=report, test_duplicates=test_dups, errors=errors)
