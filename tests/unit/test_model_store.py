"""Model store: resolution, default model, LRU of pinned versions, single-flight loads, hot swap, polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import NotFound, Unavailable
from common.manifest import Manifest, Preprocessing
from common.registry import Registry
from common.settings import ClassifierSettings, CommonSettings
from services.classifier.model_store import ModelStore


class FakeBackend:
    def __init__(self, manifest: Manifest) -> None:
        self.name = "fake"
        self.version = manifest.version

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.full((batch.shape[0], 2), float(self.version), np.float32)


class Factory:
    """Builds FakeBackends, counting calls; versions in `broken` fail; `delay` slows every load."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.broken: set[tuple[str, int]] = set()
        self.delay = 0.0

    def __call__(self, manifest: Manifest) -> FakeBackend:
        key = (manifest.name, manifest.version)
        self.calls.append(key)
        time.sleep(self.delay)
        if key in self.broken:
            raise RuntimeError(f"cannot convert {key}")
        return FakeBackend(manifest)


def publish(registry: Registry, name: str, aliases: list[str] | None = None) -> int:
    manifest = Manifest(
        name=name,
        architecture="fake",
        classes=["def_front", "ok_front"],
        defect_class="def_front",
        preprocessing=Preprocessing(image_size=4, mean=[0.5] * 3, std=[0.25] * 3),
    )
    return registry.publish(manifest, {"w": torch.zeros(1)}, aliases=aliases).version


@pytest.fixture
def registry(registry_root: Path) -> Registry:
    return Registry(registry_root)


@contextmanager
def open_store(registry: Registry, factory: Factory, **overrides: object) -> Iterator[tuple[ModelStore, list[bool]]]:
    """A store on the registry (closed when the block ends) and the list its on_ready calls append to."""
    settings = ClassifierSettings(common=CommonSettings(registry=registry.root), **overrides)  # type: ignore[arg-type]
    ready: list[bool] = []
    store = ModelStore(registry, settings, factory=factory, on_ready=ready.append)
    try:
        yield store, ready
    finally:
        store.close()


def served_version(store: ModelStore, name: str = "", version: int = 0, alias: str = "") -> int:
    with store.lease(name, version, alias) as model:
        return model.manifest.version


def test_default_model_is_the_newest_published_and_prefers_production(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "a")
    publish(registry, "a")
    with open_store(registry, factory) as (store, ready):
        store.refresh()
        assert ready == [True] and store.default_name() == "a"
        assert served_version(store) == 2
        publish(registry, "b", aliases=["production"])
        publish(registry, "b")
        store.refresh()
        assert store.default_name() == "b"
        assert served_version(store) == 1  # production alias wins over the newest version
        assert served_version(store, "a") == 2
        registry.set_alias("b", "production", 2)
        store.refresh()
        assert served_version(store) == 2


def test_configured_default_model_and_unknown_names(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "a")
    publish(registry, "b")
    with open_store(registry, factory, default_model="a") as (store, _):
        store.refresh()
        assert served_version(store) == 1 and store.default_name() == "a"
        with pytest.raises(NotFound):
            store.acquire("zzz")
        with pytest.raises(NotFound):
            store.acquire("a", version=5)
        with pytest.raises(NotFound):
            store.acquire("a", alias="staging")


def test_empty_registry_is_unavailable(registry: Registry) -> None:
    with open_store(registry, Factory()) as (store, ready):
        store.refresh()
        with pytest.raises(Unavailable):
            store.acquire()
        assert ready == [] and not store.ready


def test_pinned_versions_are_lru_bounded_and_targets_stay(registry: Registry) -> None:
    factory = Factory()
    for _ in range(4):
        publish(registry, "m")
    with open_store(registry, factory, max_loaded_models=2) as (store, _):
        store.refresh()  # target ("m", "") -> v4
        assert served_version(store, "m", 1) == 1
        assert served_version(store, "m", 2) == 2  # pool: v4 (target), v1, v2 -> v1 evicted
        loaded = sorted(m.manifest.version for m in store.loaded())
        assert loaded == [2, 4]
        assert served_version(store, "m", 1) == 1  # loaded again
        assert factory.calls.count(("m", 1)) == 2
        assert served_version(store) == 4


def test_concurrent_requests_load_a_version_once(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "m")
    publish(registry, "m")
    with open_store(registry, factory) as (store, _):
        factory.delay = 0.3
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(served_version(store, "m", 1))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [1] * 6
        assert factory.calls == [("m", 1)]


def test_hot_swap_keeps_leased_old_version_until_released(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "m")
    with open_store(registry, factory) as (store, _):
        store.refresh()
        old = store.acquire()
        publish(registry, "m")
        store.refresh()
        assert served_version(store) == 2
        # The in-flight request still computes on v1.
        out = old.batcher.submit(np.zeros((3, 4, 4), np.float32)).result(5)
        assert out.logits[0] == 1.0
        store.release(old)
        with pytest.raises(Unavailable):
            old.batcher.submit(np.zeros((3, 4, 4), np.float32))
        assert [m.manifest.version for m in store.loaded()] == [2]


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "m")
    with open_store(registry, factory, load_retry_seconds=60) as (store, _):
        store.refresh()
        factory.broken.add(("m", 2))
        publish(registry, "m")
        store.refresh()
        assert served_version(store) == 1
        assert factory.calls.count(("m", 2)) == 1
        with pytest.raises(Unavailable, match="cannot convert"):
            store.acquire("m", 2)  # not retried within load_retry_seconds
        store.refresh()
        assert served_version(store) == 1
        assert factory.calls.count(("m", 2)) == 1


def test_registry_poll_picks_up_a_new_version_without_an_event(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "m")
    with open_store(registry, factory, reload_poll_seconds=0.1) as (store, ready):
        store.start()
        assert store.wait_ready(10) and ready == [True]
        publish(registry, "m")
        end = time.monotonic() + 10
        while time.monotonic() < end and served_version(store) != 2:
            time.sleep(0.05)
        assert served_version(store) == 2


def test_alias_targets_follow_moves_and_removals(registry: Registry) -> None:
    factory = Factory()
    publish(registry, "m", aliases=["staging"])
    publish(registry, "m")
    with open_store(registry, factory) as (store, _):
        assert served_version(store, "m", alias="staging") == 1
        registry.set_alias("m", "staging", 2)
        store.refresh()
        assert served_version(store, "m", alias="staging") == 2
        (registry.root / "m" / "aliases.json").write_text("{}")
        store.refresh()
        with pytest.raises(NotFound):
            store.acquire("m", alias="staging")
        assert served_version(store, "m") == 2
