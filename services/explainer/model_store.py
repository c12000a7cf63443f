"""Published models for explanation: resolved per request, loaded once per version (LRU-bounded)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from common.errors import Unavailable
from common.manifest import Manifest
from common.models.loading import load_published
from common.models.zoo import ArchSpec, get_spec
from common.registry import Registry


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    spec: ArchSpec
    model: nn.Module


class ExplainerModelStore:
    def __init__(self, registry: Registry, default_model: str = "", default_alias: str = "production",
                 capacity: int = 4) -> None:
        self.registry = registry
        self.default_model = default_model
        self.default_alias = default_alias
        self.capacity = capacity
        self._loaded: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, name: str = "", version: int = 0, alias: str = "") -> Manifest:
        if not name:
            name = self.default_model
        if not name:
            newest = self.registry.newest()
            if newest is None:
                raise Unavailable("no model has been published yet")
            name = newest.name
        return self.registry.resolve(name, version, alias, self.default_alias)

    def get(self, name: str = "", version: int = 0, alias: str = "") -> LoadedModel:
        manifest = self.resolve(name, version, alias)
        key = (manifest.name, manifest.version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                cached = self._loaded[key]
                if cached.manifest != manifest:  # e.g. explanation defaults stored by a search: same weights
                    cached = LoadedModel(manifest, cached.spec, cached.model)
                    self._loaded[key] = cached
                return cached
            loaded = LoadedModel(manifest, get_spec(manifest.architecture), load_published(self.registry, manifest))
            self._loaded[key] = loaded
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return loaded
