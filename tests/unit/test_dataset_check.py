"""The dataset check on small ImageFolder trees written by the test: counts, formats, duplicates, problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.datasets.synthetic import render_part
from common.errors import FailedPrecondition, InvalidArgument
from services.trainer.dataset_check import NEAR_DUPLICATE_BITS, check_dataset
from services.trainer.dataset_facts import HASH_BITS, perceptual_hash, scan_file
from services.trainer.near_duplicates import near_pairs


def _part(seed: int, size: int = 96) -> np.ndarray:
    return render_part(np.random.default_rng(seed), size, ("pit",) if seed % 2 else ())[0]


def _write(path: Path, img: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    path = path.with_suffix(ext)
    path.write_bytes(buf.tobytes())
    return path


def _distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.bitwise_count(a ^ b).sum())


def test_perceptual_hash_keeps_re_encoded_copies_close_and_other_parts_far() -> None:
    img = _part(1)
    h = perceptual_hash(img)
    assert h.dtype == np.uint64 and h.shape == (4,)
    assert int(np.bitwise_count(h).sum()) == HASH_BITS // 2  # median split: half the bits (rounded down) set
    recoded = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(img, (150, 150), interpolation=cv2.INTER_LINEAR)
    assert _distance(h, perceptual_hash(recoded)) <= NEAR_DUPLICATE_BITS
    assert _distance(h, perceptual_hash(resized)) <= NEAR_DUPLICATE_BITS
    others = [_distance(h, perceptual_hash(_part(s))) for s in range(3, 13)]
    assert min(others) > 4 * NEAR_DUPLICATE_BITS


def test_near_pairs_match_a_brute_force_search() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=(40, 4), dtype=np.uint64)
    # near copies: flip 1..5 random bits of some rows
    copies = []
    for i in range(0, 40, 4):
        row = base[i].copy()
        bits = np.unpackbits(row.view(np.uint8))
        flip = rng.choice(256, size=int(rng.integers(1, 6)), replace=False)
        bits[flip] ^= 1
        copies.append(np.packbits(bits).view(np.uint64))
    hashes = np.vstack([base, np.stack(copies)])
    for max_bits in (2, 4):
        expected = [(i, j, _distance(hashes[i], hashes[j])) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                    if _distance(hashes[i], hashes[j]) <= max_bits]
        assert near_pairs(hashes, max_bits) == expected
        assert expected  # the test data holds some


def test_scan_file_reads_header_facts_and_flags_bad_files(tmp_path: Path) -> None:
    grey16 = (_part(2).astype(np.uint16) * 257)
    facts = scan_file(_write(tmp_path / "a", grey16))
    assert (facts.format, facts.width, facts.height, facts.channels, facts.bit_depth) == ("png", 96, 96, 1, 16)
    colour = cv2.cvtColor(_part(2), cv2.COLOR_GRAY2BGR)
    facts = scan_file(_write(tmp_path / "b", colour, ".jpg"))
    assert (facts.format, facts.channels, facts.bit_depth, facts.grey_colour) == ("jpeg", 3, 8, True)
    colour[:20, :20] = (0, 0, 255)
    assert not scan_file(_write(tmp_path / "c", colour, ".png")).grey_colour
    truncated = tmp_path / "d.png"
    truncated.write_bytes((tmp_path / "c.png").read_bytes()[:200])
    bad = scan_file(truncated)
    assert bad.error and not bad.phash and bad.sha256
    assert "unsupported format" in scan_file(_write_bytes(tmp_path / "e.png", b"GIF89a....")).error


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _dataset(root: Path, *, per_class: int = 12, test_per_class: int = 4, classes=("def", "ok")) -> Path:
    seed = 100
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in classes:
            for i in range(n):
                seed += 1
                _write(root / split / cls / f"{cls}_{i:03d}", _part(seed))
    return root


def test_report_counts_sizes_duplicates_and_conflicts(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    # an exact copy of a training image in test, a re-encoded (near) copy in test, a conflicting copy
    shutil.copy(root / "train/def/def_000.png", root / "test/def/copy.png")
    img = cv2.imread(str(root / "train/ok/ok_001.png"), cv2.IMREAD_GRAYSCALE)
    _write(root / "test/ok/near", img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    shutil.copy(root / "train/def/def_002.png", root / "train/ok/mislabelled.png")
    _write(root / "train/ok/wide", cv2.resize(_part(7), (160, 80)))
    (root / "train/def/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)

    check = check_dataset(root, seed=0, val_fraction=0.2, cache_dir=tmp_path / "cache")
    r = check.report
    assert r["classes"] == ["def", "ok"]
    counts = {row["split"]: row["images"] for row in r["splits"]}
    assert counts["train"] + counts["val"] == 12 + 1 + 12 + 2 and counts["test"] == 4 + 1 + 4 + 1
    assert r["unreadable_count"] == 1 and r["unreadable"][0]["path"] == "train/def/broken.png"
    assert {v["value"] for v in r["sizes"]} == {"96x96", "160x80"} and r["aspect_ratio"]["max"] == 2.0
    assert {v["value"] for v in r["formats"]} == {"png", "jpeg"}
    assert r["exact_duplicates"]["groups"] == 2 and r["exact_duplicates"]["conflicting_groups"] == 1
    assert r["exact_duplicates"]["test_files_in_train"] == 1
    assert r["near_duplicates"]["test_files_in_train"] == 1
    assert check.test_duplicates == {"test/def/copy.png", "test/ok/near.jpg"}
    assert r["test_after_dedup"] == 10 - 2
    conflicting = [g for g in r["duplicate_groups"] if g["conflicting_labels"]]
    assert conflicting and r["duplicate_groups"][0] is conflicting[0]  # listed first
    assert {f["class_name"] for f in conflicting[0]["files"]} == {"def", "ok"}
    joined = " ".join(r["warnings"])
    assert "unreadable" in joined and "conflicting labels" in joined and "2 sizes" in joined
    assert not r["cached"] and not check.errors

    again = check_dataset(root, seed=0, val_fraction=0.2, cache_dir=tmp_path / "cache")
    assert again.report["cached"] and again.test_duplicates == check.test_duplicates
    (root / "test/ok/near.jpg").unlink()  # a changed dataset is scanned afresh
    changed = check_dataset(root, seed=0, val_fraction=0.2, cache_dir=tmp_path / "cache")
    assert not changed.report["cached"] and changed.test_duplicates == {"test/def/copy.png"}


def test_imbalance_and_a_test_split_of_copies(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", per_class=3)
    for i in range(3, 12):
        _write(root / "train" / "ok" / f"more_{i}", _part(1000 + i))
    shutil.rmtree(root / "test")
    for cls in ("def", "ok"):
        (root / "test" / cls).mkdir(parents=True)
        shutil.copy(root / "train" / cls / f"{cls}_000.png", root / "test" / cls / "x.png")
    check = check_dataset(root, seed=0, val_fraction=0.1)
    assert check.report["imbalance_ratio"] == pytest.approx(12 / 3)
    assert any("imbalanced" in w for w in check.report["warnings"])
    assert check.report["test_after_dedup"] == 0 and len(check.errors) == 1
    with pytest.raises(FailedPrecondition, match="test split measures nothing"):
        check.raise_for_errors()


def test_a_class_of_only_unreadable_files_is_invalid(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", per_class=3, test_per_class=0)
    for path in (root / "train" / "ok").iterdir():
        path.write_bytes(b"not an image at all")
    with pytest.raises(InvalidArgument, match="class 'ok' has no readable image"):
        check_dataset(root)


def test_header_level_pass_finds_exact_copies_and_truncation_without_decoding(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", per_class=4, test_per_class=2)
    shutil.copy(root / "train/def/def_000.png", root / "test/def/copy.png")
    img = cv2.imread(str(root / "train/ok/ok_001.png"), cv2.IMREAD_GRAYSCALE)
    _write(root / "test/ok/near", img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    good = (root / "train/ok/ok_000.png").read_bytes()
    (root / "train/ok/cut.png").write_bytes(good[: len(good) // 2])
    header = check_dataset(root, cache_dir=tmp_path / "cache", decode=False)
    r = header.report
    assert not r["decoded"] and r["exact_duplicates"]["test_files_in_train"] == 1
    assert r["near_duplicates"]["groups"] == 0 and r["grey_colour_images"] == 0  # need pixels
    assert r["unreadable"][0]["path"] == "train/ok/cut.png" and "truncated" in r["unreadable"][0]["reason"]
    full = check_dataset(root, cache_dir=tmp_path / "cache")
    assert full.report["decoded"] and not full.report["cached"]  # header facts do not answer a full request
    assert full.test_duplicates == {"test/def/copy.png", "test/ok/near.jpg"}
    again = check_dataset(root, cache_dir=tmp_path / "cache", decode=False)
    assert again.report["cached"] and again.report["decoded"]  # cached full facts do answer a header request


def test_scan_file_refuses_a_tiff_tile_bomb_from_its_header(tmp_path: Path) -> None:
    # 122 bytes declaring 16384 x 16368 tiles: OpenCV would allocate about 1 GB to decode it.
    bomb = Path(__file__).resolve().parents[1] / "corpus" / "files" / "tile-bomb.tiff"
    facts = scan_file(bomb, decode=True)
    assert "tile" in facts.error and not facts.decoded
