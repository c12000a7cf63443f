"""ImageFolder discovery / split / Dataset / in-memory loading, channel statistics, path confinement."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.datasets.imagefolder import (
    Augment,
    ImageFolderDataset,
    Sample,
    dataset_fingerprint,
    discover,
    load_split_arrays,
    split_train_val,
)
from common.datasets.stats import channel_mean_std
from common.datasets.synthetic import generate_dataset
from common.errors import InvalidArgument, NotFound, PermissionDenied
from common.images import decode_image, preprocess, resize_for_model
from common.paths import resolve_under_roots

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture
def syn_root(tmp_path: Path) -> Path:
    return generate_dataset(tmp_path / "syn", train_per_class=10, test_per_class=3, size=32, seed=0)


# --- discovery ---------------------------------------------------------------------------------


def test_discover_synthetic(syn_root: Path) -> None:
    folder = discover(syn_root)
    assert folder.classes == ["def_front", "ok_front"]
    assert len(folder.train) == 20 and len(folder.test) == 6
    assert [s.label for s in folder.train] == [0] * 10 + [1] * 10
    assert all(s.path.parent.name == folder.classes[s.label] for s in folder.train + folder.test)
    assert folder.train == sorted(folder.train)


def test_discover_filters_extensions_hidden_and_recurses(syn_root: Path) -> None:
    ok_dir = syn_root / "train" / "ok_front"
    png = next(ok_dir.glob("*.png")).read_bytes()
    (ok_dir / "notes.txt").write_text("not an image")
    (ok_dir / ".hidden.png").write_bytes(png)
    (ok_dir / "UPPER.PNG").write_bytes(png)
    (ok_dir / "batch2").mkdir()
    (ok_dir / "batch2" / "nested.jpeg").write_bytes(png)
    (syn_root / "train" / ".cache").mkdir()
    names = {s.path.name for s in discover(syn_root).train if s.label == 1}
    assert {"UPPER.PNG", "nested.jpeg"} <= names
    assert "notes.txt" not in names and ".hidden.png" not in names
    assert len(names) == 12


def test_discover_without_test_folder(syn_root: Path) -> None:
    shutil.rmtree(syn_root / "test")
    assert discover(syn_root).test == []


def test_discover_errors(tmp_path: Path, syn_root: Path) -> None:
    with pytest.raises(InvalidArgument, match="no train/ folder"):
        discover(tmp_path / "nowhere")
    one = tmp_path / "one"
    (one / "train" / "ok_front").mkdir(parents=True)
    (one / "train" / "ok_front" / "a.png").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="at least 2 classes"):
        discover(one)
    (syn_root / "train" / "scratch").mkdir()
    (syn_root / "train" / "scratch" / "readme.txt").write_text("no images here")
    with pytest.raises(InvalidArgument, match="class 'scratch' .* has no images"):
        discover(syn_root)


def test_discover_test_classes_must_match(syn_root: Path) -> None:
    (syn_root / "test" / "ok_front").rename(syn_root / "test" / "good")
    with pytest.raises(InvalidArgument, match="differ from train/ classes"):
        discover(syn_root)


# --- split -----------------------------------------------------------------------------------


def _samples(n_a: int, n_b: int) -> list[Sample]:
    return [Sample(Path(f"/d/a/{i:03d}.png"), 0) for i in range(n_a)] + [
        Sample(Path(f"/d/b/{i:03d}.png"), 1) for i in range(n_b)
    ]


def test_split_stratified_sizes_and_determinism() -> None:
    samples = _samples(75, 25)
    train, val = split_train_val(samples, val_fraction=0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sum(s.label for s in val) == 2  # round(25 * 0.1) from class 1, round(75 * 0.1) = 8 from 0
    assert sorted(train + val) == sorted(samples) and not set(train) & set(val)
    assert split_train_val(list(reversed(samples)), val_fraction=0.1, seed=3) == (train, val)
    assert split_train_val(samples, val_fraction=0.1, seed=4)[1] != val


def test_split_small_classes_keep_one_each_side() -> None:
    train, val = split_train_val(_samples(3, 2), val_fraction=0.1, seed=0)
    assert sorted(s.label for s in val) == [0, 1]
    assert sorted(s.label for s in train) == [0, 0, 1]


def test_split_plain_and_errors() -> None:
    samples = _samples(75, 25)
    train, val = split_train_val(samples, val_fraction=0.2, seed=0, stratified=False)
    assert len(val) == 20 and len(train) == 80
    assert split_train_val(samples, val_fraction=0.0)[1] == []
    for bad in (-0.1, 1.0):
        with pytest.raises(InvalidArgument, match="val_fraction"):
            split_train_val(samples, val_fraction=bad)


# --- torch Dataset and in-memory loading ---------------------------------------------------


def test_dataset_items_match_preprocess(syn_root: Path) -> None:
    folder = discover(syn_root)
    ds = ImageFolderDataset(folder.train, 24, MEAN, STD)
    x, y = ds[12]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 24, 24)
    assert y == 1
    ref = preprocess(decode_image(folder.train[12].path.read_bytes()), 24, MEAN, STD)
    np.testing.assert_array_equal(x.numpy(), ref)
    assert ds.unreadable_count == 0


def test_unreadable_images_are_dropped_and_counted(syn_root: Path) -> None:
    folder = discover(syn_root)
    bad = folder.train[3].path
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    gone = folder.train[15].path
    gone.unlink()
    ds = ImageFolderDataset(folder.train, 16, MEAN, STD)
    assert ds[3] is None and ds[15] is None
    assert ds.unreadable_count == 2 and ds.unreadable_paths == {bad, gone}
    loader = DataLoader(ds, batch_size=8, collate_fn=ds.collate)
    seen = sum(len(y) for _, y in loader)
    assert seen == 18
    assert ds.unreadable_count == 4  # counted again on the second pass
    x, y = ds.collate([None, None])
    assert x.shape == (0, 3, 16, 16) and y.shape == (0,)


def test_unreadable_count_includes_worker_processes(syn_root: Path) -> None:
    folder = discover(syn_root)
    folder.train[0].path.write_bytes(b"junk")
    folder.train[11].path.write_bytes(b"")
    ds = ImageFolderDataset(folder.train, 16, MEAN, STD)
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=ds.collate)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 18
    assert ds.unreadable_count == 2


def test_augmentation_is_seeded_per_item_and_epoch(syn_root: Path) -> None:
    samples = discover(syn_root).train
    plain = ImageFolderDataset(samples, 32, MEAN, STD)
    aug = ImageFolderDataset(samples, 32, MEAN, STD, augment=True, seed=7)
    again = ImageFolderDataset(samples, 32, MEAN, STD, augment=Augment(), seed=7)
    a = torch.stack([aug[i][0] for i in range(len(samples))])
    b = torch.stack([again[i][0] for i in range(len(samples))])
    p = torch.stack([plain[i][0] for i in range(len(samples))])
    assert torch.equal(a, b)
    assert not torch.equal(a, p)
    aug.set_epoch(1)
    assert not torch.equal(torch.stack([aug[i][0] for i in range(len(samples))]), a)
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert a.min() >= lo - 1e-6 and a.max() <= hi + 1e-6
    geometric = ImageFolderDataset(samples, 32, MEAN, STD, augment=Augment(brightness=0, contrast=0))
    for i in range(4):  # flips / rotations only permute pixels
        g, q = geometric[i][0], plain[i][0]
        assert torch.equal(torch.sort(g.flatten()).values, torch.sort(q.flatten()).values)


def test_load_split_arrays(syn_root: Path) -> None:
    samples = discover(syn_root).test
    samples[2].path.write_bytes(b"not an image")
    unreadable: list[Path] = []
    calls: list[tuple[int, int]] = []
    x, y = load_split_arrays(
        samples, 20, MEAN, STD, workers=2, unreadable=unreadable, progress=lambda d, t: calls.append((d, t))
    )
    keep = [s for i, s in enumerate(samples) if i != 2]
    assert x.shape == (5, 3, 20, 20) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.dtype == np.int64 and y.tolist() == [s.label for s in keep]
    assert unreadable == [samples[2].path]
    assert sorted(d for d, _ in calls) == list(range(1, 7)) and {t for _, t in calls} == {6}
    for i, s in enumerate(keep):
        np.testing.assert_array_equal(x[i], preprocess(decode_image(s.path.read_bytes()), 20, MEAN, STD))


# --- fingerprint ---------------------------------------------------------------------------


def test_fingerprint_tracks_files(syn_root: Path) -> None:
    first = dataset_fingerprint(syn_root)
    assert first == dataset_fingerprint(syn_root) and len(first) == 64
    (syn_root / "README.txt").write_text("not an image: ignored")
    assert dataset_fingerprint(syn_root) == first
    victim = next((syn_root / "test" / "ok_front").glob("*.png"))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = dataset_fingerprint(syn_root)
    assert touched != first
    victim.rename(victim.with_name("renamed.png"))
    assert dataset_fingerprint(syn_root) not in (first, touched)


# --- channel statistics --------------------------------------------------------------------


def _reference_stats(samples: list[Sample], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    imgs = []
    for s in samples:
        img = decode_image(s.path.read_bytes())
        imgs.append((resize_for_model(img, size) if size else img).reshape(-1, 3).astype(np.float64) / 255)
    pixels = np.concatenate(imgs)
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_stats_equal_numpy_reference(syn_root: Path) -> None:
    train, _ = split_train_val(discover(syn_root).train, seed=0)
    for size in (24, None):
        mean, std = channel_mean_std(train, size, None, "fp", workers=2)
        ref_mean, ref_std = _reference_stats(train, size)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
        np.testing.assert_allclose(std, ref_std, rtol=1e-10)
        assert mean[0] == mean[1] == mean[2]  # grayscale content
    paths_only = channel_mean_std([s.path for s in train], 24, None, "fp")
    assert paths_only == channel_mean_std(train, 24, None, "fp")


def test_stats_cache_hit_and_key(syn_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    train = discover(syn_root).train
    fp = dataset_fingerprint(syn_root)
    first = channel_mean_std(train, 24, cache, fp)
    files = list(cache.glob("stats-*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["key"]["fingerprint"] == fp and entry["key"]["split"] == "train"
    assert entry["mean"] == first[0]
    for s in train:  # a cache hit reads no image at all
        s.path.write_bytes(b"gone")
    assert channel_mean_std(train, 24, cache, fp) == first
    with pytest.raises(InvalidArgument, match="no readable images"):
        channel_mean_std(train, 28, cache, fp)  # another size is another key: recomputed
    with pytest.raises(InvalidArgument, match="no readable images"):
        channel_mean_std(train, 24, cache, "other-fingerprint")
    files[0].write_text("{broken json")
    with pytest.raises(InvalidArgument, match="no readable images"):
        channel_mean_std(train, 24, cache, fp)  # a corrupt entry is ignored, not trusted
    with pytest.raises(InvalidArgument, match="no samples"):
        channel_mean_std([], 24, cache, fp)


# --- paths ---------------------------------------------------------------------------------


def test_resolve_under_roots(tmp_path: Path) -> None:
    data, other = tmp_path / "data", tmp_path / "other"
    (data / "casting" / "train").mkdir(parents=True)
    (other / "secret").mkdir(parents=True)
    (data / "escape").symlink_to(other / "secret")
    (data / "inner").symlink_to(data / "casting")
    roots = [data]
    assert resolve_under_roots(data / "casting", roots) == (data / "casting").resolve()
    assert resolve_under_roots("casting/train", roots) == (data / "casting" / "train").resolve()
    assert resolve_under_roots(data / "inner", roots) == (data / "casting").resolve()
    assert resolve_under_roots("casting", [other, data]) == (data / "casting").resolve()
    for outside in (other / "secret", data / "escape", data / ".." / "other", "../other", "/etc"):
        with pytest.raises(PermissionDenied, match="outside the allowed data roots") as err:
            resolve_under_roots(outside, roots)
        if str(data) not in str(outside):  # only the caller's own path is repeated, never the server's roots
            assert str(data.resolve()) not in err.value.message
    with pytest.raises(PermissionDenied):  # outside and missing: no hint that it does not exist
        resolve_under_roots(other / "missing", roots)
    with pytest.raises(NotFound, match="does not exist"):
        resolve_under_roots(data / "missing", roots)
    with pytest.raises(NotFound) as missing:
        resolve_under_roots("missing", roots)
    assert str(data.resolve()) not in missing.value.message
    with pytest.raises(InvalidArgument):
        resolve_under_roots("", roots)
    with pytest.raises(PermissionDenied, match="no data roots configured"):
        resolve_under_roots(data, [])
