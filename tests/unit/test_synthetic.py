"""common.datasets.synthetic: seeded parts with exact defect masks, written as an ImageFolder."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.datasets.synthetic import DEFECT_KINDS, generate_dataset, render_part


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_render_is_deterministic_by_seed() -> None:
    a_img, a_mask = render_part(_rng(5), 64, ("pit", "crack"))
    b_img, b_mask = render_part(_rng(5), 64, ("pit", "crack"))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = render_part(_rng(6), 64, ("pit", "crack"))
    assert not np.array_equal(a_img, c_img)


def test_ok_part_has_empty_mask() -> None:
    img, mask = render_part(_rng(0), 64, ())
    assert img.shape == (64, 64) and img.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and not mask.any()
    # a bright part on a dark background
    assert img[32 - 20 : 32 + 20, 32 + 12].mean() > 110 > img[:3, :3].mean()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("seed", range(8))
def test_mask_is_exactly_the_changed_pixels(kind: str, seed: int) -> None:
    """Same seed with and without the defect: the images differ exactly on the mask."""
    clean, empty = render_part(_rng(seed), 64, ())
    defect, mask = render_part(_rng(seed), 64, (kind,))
    assert not empty.any()
    assert mask.sum() >= 6, "a defect must be big enough to see at 64 px"
    np.testing.assert_array_equal(defect[~mask], clean[~mask])
    assert np.all(defect[mask] != clean[mask])
    # defects are dark on the bright part: a clear contrast for a small CNN
    assert defect[mask].mean() < clean[mask].mean() - 50


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown defect kinds"):
        render_part(_rng(0), 64, ("scratch",))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generate_layout_masks_and_speed(tmp_path: Path) -> None:
    start = time.perf_counter()
    root = generate_dataset(tmp_path / "syn", train_per_class=40, test_per_class=10, size=64, seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"100 images took {elapsed:.2f} s"
    assert root == tmp_path / "syn"
    for split, n in (("train", 40), ("test", 10)):
        defects = sorted(p.name for p in (root / split / "def_front").glob("*.png"))
        oks = sorted(p.name for p in (root / split / "ok_front").glob("*.png"))
        assert len(defects) == len(oks) == n
        masks = sorted(p.name for p in (root / "masks" / split / "def_front").glob("*.png"))
        assert masks == defects
        assert not (root / "masks" / split / "ok_front").exists()
        for name in defects[:5]:
            img = cv2.imread(str(root / split / "def_front" / name), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(root / "masks" / split / "def_front" / name), cv2.IMREAD_UNCHANGED)
            assert img.shape == mask.shape == (64, 64)
            assert set(np.unique(mask).tolist()) == {0, 255}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    a = _tree(generate_dataset(tmp_path / "a", train_per_class=3, test_per_class=2, seed=1))
    b = _tree(generate_dataset(tmp_path / "b", train_per_class=3, test_per_class=2, seed=1))
    c = _tree(generate_dataset(tmp_path / "c", train_per_class=3, test_per_class=2, seed=2))
    assert a == b
    assert a.keys() == c.keys() and a != c
    # image i of a split does not depend on how many images the split has
    d = _tree(generate_dataset(tmp_path / "d", train_per_class=5, test_per_class=2, seed=1))
    assert all(d[k] == v for k, v in a.items())


def test_brightness_alone_is_a_poor_classifier(tmp_path: Path) -> None:
    """Defects darken a few pixels, but the global brightness jitter swamps that: no shortcut."""
    root = generate_dataset(tmp_path / "syn", train_per_class=60, test_per_class=0, size=64, seed=0)

    def means(cls: str) -> list[float]:
        return [float(cv2.imread(str(p), 0).mean()) for p in (root / "train" / cls).glob("*.png")]

    values = np.array(means("def_front") + means("ok_front"))
    is_def = np.arange(len(values)) < 60
    best = max(max(np.mean((values < t) == is_def), np.mean((values >= t) == is_def)) for t in values)
    assert best < 0.75, f"mean brightness alone separates the classes with accuracy {best:.2f}"


def test_regenerating_needs_overwrite_and_leaves_no_stale_files(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", train_per_class=4, test_per_class=1, seed=0)
    (root / "notes.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_dataset(root, train_per_class=2, test_per_class=1)
    generate_dataset(root, train_per_class=2, test_per_class=1, overwrite=True)
    assert len(list((root / "train" / "ok_front").glob("*.png"))) == 2
    assert len(list((root / "masks" / "train" / "def_front").glob("*.png"))) == 2
    assert (root / "notes.txt").read_text() == "kept"


def test_hardness_gives_uneven_classes_varied_frames_small_defects_and_colour(tmp_path: Path) -> None:
    from common.datasets.synthetic import Hardness

    hard = Hardness(defect_scale=0.3, defect_share=0.05, aspect_range=(0.5, 2.0), size_jitter=0.3, channels=3)
    root = generate_dataset(tmp_path / "hard", train_per_class=20, test_per_class=10, size=64, hardness=hard)
    defects = sorted((root / "train" / "def_front").glob("*.png"))
    assert len(defects) == 2 and len(list((root / "train" / "ok_front").glob("*.png"))) == 38
    assert len(list((root / "test" / "def_front").glob("*.png"))) == 1
    shapes = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in sorted(root.glob("train/ok_front/*.png"))]
    assert all(len(s) == 3 and s[2] == 3 for s in shapes)
    assert len({s[0] / s[1] for s in shapes}) > 10 and min(min(s[:2]) for s in shapes) < 64 < max(max(s[:2]) for s in shapes)
    for image in defects:  # the mask matches its image's frame
        mask = cv2.imread(str(root / "masks" / "train" / "def_front" / image.name), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2] and (mask > 0).any()
    small_img, small_mask = render_part(_rng(3), 128, ("pit",), defect_scale=0.3)
    _, usual_mask = render_part(_rng(3), 128, ("pit",))
    assert 0 < small_mask.sum() < usual_mask.sum() / 3
    with pytest.raises(ValueError, match="defect_share"):
        Hardness(defect_share=1.0)


def test_default_hardness_renders_what_it_always_did(tmp_path: Path) -> None:
    """Datasets generated before Hardness existed are reproduced byte for byte (digest taken then)."""
    import hashlib

    root = generate_dataset(tmp_path / "a", train_per_class=2, test_per_class=1, size=32)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(path.read_bytes())
    assert digest.hexdigest() == "cdf196352d39677986fcf5f9f440fd2e6bb9314043328f26f8b8d5bc83aa4edd"
