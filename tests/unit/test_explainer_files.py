"""EvaluateDataset files: reports go only into folders that are new or the explainer's own (never over a foreign
file); dataset files over the byte limit are refused from their size."""

from __future__ import annotations

import pytest

from common.errors import FailedPrecondition, PermissionDenied
from services.explainer.report import OWNER_MARKER, resolve_output_dir


def test_a_folder_with_foreign_files_is_refused_and_left_alone(tmp_path) -> None:
    out, data = tmp_path / "reports", tmp_path / "data"
    (data / "casting").mkdir(parents=True)
    precious = data / "casting" / "summary.md"  # a name the report would write
    precious.write_text("the line's own notes")
    with pytest.raises(FailedPrecondition, match="did not write"):
        resolve_output_dir(str(data / "casting"), out, [data])
    assert precious.read_text() == "the line's own notes" and not (data / "casting" / OWNER_MARKER).exists()
    with pytest.raises(FailedPrecondition):
        resolve_output_dir(str(data), out, [data])  # a data root itself
    with pytest.raises(FailedPrecondition, match="not a folder"):
        resolve_output_dir(str(precious), out, [data])


def test_new_empty_and_own_folders_are_used(tmp_path) -> None:
    out, data = tmp_path / "reports", tmp_path / "data"
    data.mkdir()
    first = resolve_output_dir("run1", out, [data])
    assert (first / OWNER_MARKER).is_file()
    (first / "summary.md").write_text("an earlier report")
    assert resolve_output_dir("run1", out, [data]) == first  # ours: a rerun may replace its files
    (data / "empty").mkdir()
    assert (resolve_output_dir(str(data / "empty"), out, [data]) / OWNER_MARKER).is_file()
    fresh = resolve_output_dir("", out, [data])
    assert fresh.parent == out.resolve() and (fresh / OWNER_MARKER).is_file()


def test_outside_roots_is_refused_without_listing_them(tmp_path) -> None:
    out, data = tmp_path / "reports", tmp_path / "data"
    with pytest.raises(PermissionDenied) as err:
        resolve_output_dir("/etc/zdm", out, [data])
    assert str(data) not in err.value.message and str(out) not in err.value.message


def test_dataset_files_over_the_byte_limit_are_refused_from_their_size(tmp_path) -> None:
    import cv2
    import numpy as np

    from common.errors import InvalidArgument
    from services.explainer.annotated import find_annotated, load_sample

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "masks" / "a.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n" + b"#" * 5000)
    item = find_annotated(tmp_path / "images", tmp_path / "masks", "yolo").items[0]
    assert load_sample(item, "yolo", max_bytes=10_000, max_pixels=100).mask.any()
    with pytest.raises(InvalidArgument, match="mask of a.png is too large: 5018 bytes > limit 1000"):
        load_sample(item, "yolo", max_bytes=1000, max_pixels=100)
