"""Registry paths stay inside the root, and weights are verified against their manifest on every load."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import InvalidArgument, NotFound
from common.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest, Preprocessing
from common.models.loading import load_published_verified
from common.registry import IntegrityError, Registry

ESCAPES = ["/abs/path", "../../x", "..", ".", "a/b", "a\x00b", "x" * 101, "", "123"]


def _manifest(name: str = "m") -> Manifest:
    return Manifest(name=name, architecture="test_resnet", classes=["def_front", "ok_front"],
                    defect_class="def_front", preprocessing=Preprocessing(image_size=32, mean=[0.5] * 3, std=[0.2] * 3))


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.mark.parametrize("name", ESCAPES)
def test_every_read_and_write_path_refuses_names_that_leave_the_root(reg: Registry, tmp_path, name: str) -> None:
    reg.publish(_manifest(), {"w": torch.ones(2)})
    # A model published *outside* the registry, reachable by ../ or an absolute path before the fix.
    outside = Registry(tmp_path / "elsewhere")
    outside.publish(_manifest("x"), {"w": torch.ones(2)})
    calls = {
        "versions": lambda: reg.versions(name),
        "manifest": lambda: reg.manifest(name, 1),
        "aliases": lambda: reg.aliases(name),
        "resolve": lambda: reg.resolve(name),
        "path": lambda: reg.path(name, 1),
        "load_state_dict": lambda: reg.load_state_dict(name, 1),
        "set_alias": lambda: reg.set_alias(name, "production", 1),
        "update_explanation": lambda: reg.update_explanation(name, 1, _manifest().explanation),
    }
    for what, call in calls.items():
        with pytest.raises(InvalidArgument):
            call()
            pytest.fail(f"{what} accepted {name!r}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "registry"]  # nothing written beside them
    assert not (tmp_path / "elsewhere" / "x" / ".lock").exists()
    assert not (tmp_path / "elsewhere" / "x" / "aliases.json").exists()


def test_absolute_and_dotted_names_do_not_reach_a_model_outside(reg: Registry, tmp_path) -> None:
    outside = Registry(tmp_path / "elsewhere")
    outside.publish(_manifest("x"), {"w": torch.ones(2)})
    for name in (str(tmp_path / "elsewhere" / "x"), "../elsewhere/x"):
        with pytest.raises(InvalidArgument):
            reg.resolve(name)


def test_a_symlinked_model_folder_is_refused(reg: Registry, tmp_path) -> None:
    outside = Registry(tmp_path / "elsewhere")
    outside.publish(_manifest("x"), {"w": torch.ones(2)})
    (reg.root / "x").symlink_to(tmp_path / "elsewhere" / "x")
    with pytest.raises(InvalidArgument, match="not inside the registry"):
        reg.resolve("x")
    with pytest.raises(InvalidArgument):
        reg.set_alias("x", "production", 1)
    assert not (tmp_path / "elsewhere" / "x" / "aliases.json").exists()


def test_unknown_model_message_does_not_list_other_models(reg: Registry) -> None:
    reg.publish(_manifest("secret-line-7"), {"w": torch.ones(2)})
    with pytest.raises(NotFound) as err:
        reg.resolve("ghost")
    assert "secret-line-7" not in err.value.message


def test_set_alias_of_an_unknown_model_creates_nothing(reg: Registry) -> None:
    with pytest.raises(NotFound):
        reg.set_alias("ghost", "production", 1)
    assert not (reg.root / "ghost").exists()


def test_weights_are_verified_and_the_hash_is_of_the_bytes_read(reg: Registry) -> None:
    manifest = reg.publish(_manifest(), {"w": torch.arange(4.0)})
    weights = reg.load_weights(manifest)
    assert torch.equal(weights.state_dict["w"], torch.arange(4.0))
    assert weights.sha256 == manifest.weights_sha256


def _rewrite_manifest(reg: Registry, manifest: Manifest, **fields) -> Manifest:
    changed = manifest.model_copy(update=fields)
    (reg.path(manifest.name, manifest.version) / MANIFEST_FILE).write_text(changed.model_dump_json())
    return changed


def test_a_wrong_recorded_hash_is_refused(reg: Registry) -> None:
    manifest = reg.publish(_manifest(), {"w": torch.ones(2)})
    lying = _rewrite_manifest(reg, manifest, weights_sha256="0" * 64)
    with pytest.raises(IntegrityError, match="does not match"):
        reg.load_weights(lying)
    with pytest.raises(IntegrityError):
        reg.load_state_dict("m", 1)  # reads the manifest on disk: the same refusal
    unrecorded = _rewrite_manifest(reg, manifest, weights_sha256="")
    with pytest.raises(IntegrityError, match="no weights_sha256"):
        reg.load_weights(unrecorded)


def test_replaced_weights_are_refused(reg: Registry) -> None:
    manifest = reg.publish(_manifest(), {"w": torch.ones(2)})
    other = Registry(reg.root.parent / "other").publish(_manifest(), {"w": torch.zeros(2)})
    source = reg.root.parent / "other" / "m" / str(other.version) / WEIGHTS_FILE
    (reg.path("m", manifest.version) / WEIGHTS_FILE).write_bytes(source.read_bytes())  # valid file, wrong model
    with pytest.raises(IntegrityError, match="does not match"):
        reg.load_weights(manifest)


def test_truncated_safetensors_are_refused_even_with_a_matching_hash(reg: Registry) -> None:
    manifest = reg.publish(_manifest(), {"w": torch.ones(1000)})
    file = reg.path("m", manifest.version) / WEIGHTS_FILE
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(IntegrityError, match="does not match"):
        reg.load_weights(manifest)
    import hashlib

    honest = _rewrite_manifest(reg, manifest, weights_sha256=hashlib.sha256(file.read_bytes()).hexdigest())
    with pytest.raises(IntegrityError, match="not a valid safetensors"):
        reg.load_weights(honest)


def test_load_published_verified_returns_the_file_hash(reg: Registry) -> None:
    from common.models.zoo import build_model

    state = build_model("test_resnet", 2, pretrained=False, image_size=32).state_dict()
    manifest = reg.publish(_manifest(), state)
    _, sha = load_published_verified(reg, manifest)
    assert sha == manifest.weights_sha256
    assert json.loads((reg.path("m", 1) / MANIFEST_FILE).read_text())["weights_sha256"] == sha
