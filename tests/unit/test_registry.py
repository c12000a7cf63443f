from __future__ import annotations

import threading

import pytest
import torch

from common.errors import InvalidArgument, NotFound
from common.manifest import ExplanationDefaults, Manifest, Preprocessing
from common.registry import Registry


def _manifest(name: str = "m") -> Manifest:
    return Manifest(name=name, architecture="test_resnet", classes=["def_front", "ok_front"],
                    defect_class="def_front", preprocessing=Preprocessing(image_size=32, mean=[0.5] * 3,
                                                                          std=[0.2] * 3))


def test_publish_versions_and_resolution(registry_root) -> None:
    reg = Registry(registry_root)
    a = reg.publish(_manifest(), {"w": torch.ones(2)})
    b = reg.publish(_manifest(), {"w": torch.zeros(2)}, aliases=["production"])
    c = reg.publish(_manifest(), {"w": torch.full((2,), 3.0)})
    assert (a.version, b.version, c.version) == (1, 2, 3)
    assert reg.resolve("m").version == 2  # production alias wins over newest
    assert reg.resolve("m", default_alias="").version == 3
    assert reg.resolve("m", version=1).version == 1
    assert torch.equal(reg.load_state_dict("m", 3)["w"], torch.full((2,), 3.0))
    assert len(c.weights_sha256) == 64 and c.weights_sha256 != b.weights_sha256
    reg.set_alias("m", "production", 3)
    assert reg.resolve("m").version == 3 and reg.aliases_of("m", 3) == ["production"]


def test_unknown_things_are_not_found(registry_root) -> None:
    reg = Registry(registry_root)
    with pytest.raises(NotFound, match="unknown model"):
        reg.resolve("ghost")
    reg.publish(_manifest(), {"w": torch.ones(1)})
    with pytest.raises(NotFound, match="no version 7"):
        reg.resolve("m", version=7)
    with pytest.raises(NotFound, match="no alias"):
        reg.resolve("m", alias="staging")
    with pytest.raises(NotFound):
        reg.set_alias("m", "production", 9)
    with pytest.raises(InvalidArgument):
        reg.publish(_manifest("../evil"), {"w": torch.ones(1)})


def test_half_written_versions_are_invisible(registry_root) -> None:
    reg = Registry(registry_root)
    reg.publish(_manifest(), {"w": torch.ones(1)})
    (registry_root / "m" / "2").mkdir()  # a crashed writer's leftover without manifest
    (registry_root / "m" / ".tmp-dead").mkdir()
    assert reg.versions("m") == [1]
    assert reg.resolve("m").version == 1
    assert reg.publish(_manifest(), {"w": torch.ones(1)}).version == 3  # never reuses a folder name


def test_concurrent_publishers_get_distinct_versions(registry_root) -> None:
    reg = Registry(registry_root)
    versions: list[int] = []
    lock = threading.Lock()

    def publish() -> None:
        v = reg.publish(_manifest(), {"w": torch.ones(1000)}).version
        with lock:
            versions.append(v)

    threads = [threading.Thread(target=publish) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]


def test_update_explanation_defaults(registry_root) -> None:
    reg = Registry(registry_root)
    reg.publish(_manifest(), {"w": torch.ones(1)})
    reg.update_explanation("m", 1, ExplanationDefaults(layer="layer3", threshold=0.3))
    assert reg.manifest("m", 1).explanation.layer == "layer3"
