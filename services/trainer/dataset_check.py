"""Dataset check: what a dataset holds and what is wrong with it, before anything is trained on it.

The report built from the per-file facts (:mod:`services.trainer.dataset_facts`) has class counts and
imbalance per split, image size / aspect ratio / channel / bit-depth distributions, unreadable files,
and exact (SHA-256) and near (perceptual hash, :mod:`services.trainer.near_duplicates`) duplicate groups
within and across train / val / test, with conflicting labels flagged. The val split is the one training
will carve out (same function, seed and fraction).

Near-duplicate threshold: photos of identical parts look alike, so it is tight — on casting, pairs at
6 or more differing bits (of 255) were different parts, pairs at 0-2 the same photo re-encoded
(docs/trainer.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.datasets.imagefolder import Sample, dataset_fingerprint, discover, split_train_val
from common.errors import FailedPrecondition, InvalidArgument
from services.trainer.dataset_facts import relative_path, scan_files
from services.trainer.near_duplicates import connected_groups, near_pairs

log = logging.getLogger(__name__)

NEAR_DUPLICATE_BITS = 2
MAX_LISTED_GROUPS = 100
MAX_LISTED_UNREADABLE = 100
MAX_LISTED_SIZES = 20
IMBALANCE_WARNING = 3.0  # largest / smallest class in train/
SPLITS = ("train", "val", "test")


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
    return [Entry(relative_path(root, Path(s.path)), name, int(s.label))
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
    near = DuplicateIndex(entries, connected_groups(len(entries), [(a, b) for a, b, _ in pairs]), classes, exact=False,
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
