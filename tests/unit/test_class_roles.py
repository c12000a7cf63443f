"""Which classes are ok and which are defect types, for two and for more classes."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument
from common.manifest import Manifest, Preprocessing
from services.trainer.class_roles import resolve_class_roles


@pytest.mark.parametrize(("classes", "defect", "ok", "expected"), [
    (["def_front", "ok_front"], "", [], ("def_front", ["ok_front"])),  # casting: unchanged
    (["a", "b"], "", [], ("a", ["b"])),  # binary without hints: the first class, as before
    (["a", "b"], "b", [], ("b", ["a"])),
    (["crack", "good", "hole"], "", [], ("crack", ["good"])),  # MVTec-like names
    (["def_chip", "def_crack", "front"], "", [], ("def_chip", ["front"])),  # "def" prefixes tell the rest
    (["chip", "crack", "ok_a", "ok_b"], "", [], ("chip", ["ok_a", "ok_b"])),  # several ok classes
    (["x", "y", "z"], "y", [], ("y", ["x", "z"])),  # one named defect type: the old meaning
    (["x", "y", "z"], "", ["z", "x"], ("y", ["x", "z"])),  # requested, returned in class order
    (["x", "y", "z"], "z", ["x"], ("z", ["x"])),
])
def test_roles(classes, defect, ok, expected) -> None:
    assert resolve_class_roles(classes, defect, ok) == expected


@pytest.mark.parametrize(("classes", "defect", "ok", "message"), [
    (["x", "y", "z"], "", [], "set ok_classes"),
    (["x", "y"], "", ["w"], "not classes of the dataset"),
    (["x", "y"], "w", [], "not a class of the dataset"),
    (["x", "y", "z"], "x", ["x"], "also listed as an ok class"),
    (["x", "y"], "", ["x", "y"], "at least one defect class"),
    (["x", "y", "z"], "", ["x", "x"], "twice"),
])
def test_bad_roles(classes, defect, ok, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve_class_roles(classes, defect, ok)


def _manifest(classes: list[str], defect: str, ok: list[str]) -> Manifest:
    return Manifest(name="m", architecture="a", classes=classes, defect_class=defect, ok_classes=ok,
                    preprocessing=Preprocessing(image_size=8, mean=[0, 0, 0], std=[1, 1, 1]))


def test_manifest_defect_indices_for_old_and_new_manifests() -> None:
    assert _manifest(["def_front", "ok_front"], "def_front", []).defect_indices == [0]
    assert _manifest(["a", "b", "c"], "b", []).defect_indices == [1]  # written before ok_classes existed
    assert _manifest(["chip", "crack", "good"], "chip", ["good"]).defect_indices == [0, 1]
