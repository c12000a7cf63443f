"""Published models for explanation: resolved per request, loaded once per version (LRU-bounded).

A version whose weights fail verification (:class:`~common.registry.IntegrityError`) is refused, and
not re-read for ``REFUSAL_SECONDS``; a request that did not pin it keeps getting the version it was
served before (while that one is still loaded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from common.errors import Unavailable
from common.manifest import Manifest
from common.models.loading import load_published
from common.models.zoo import ArchSpec, get_spec
from common.registry import IntegrityError, Registry

log = logging.getLogger(__name__)

REFUSAL_SECONDS = 30.0


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
        self._refused: dict[tuple[str, int], tuple[float, str]] = {}  # key -> (when, why)
        self._serving: dict[tuple[str, str], tuple[str, int]] = {}  # unpinned (name, alias) -> version served
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
        try:
            loaded = self._get(manifest)
        except IntegrityError:
            previous = None if version else self._previous(manifest.name, alias)
            if previous is None:
                raise
            return previous
        if not version:
            with self._lock:
                self._serving[(manifest.name, alias)] = (manifest.name, manifest.version)
        return loaded

    def _previous(self, name: str, alias: str) -> LoadedModel | None:
        with self._lock:
            key = self._serving.get((name, alias))
            return self._loaded.get(key) if key is not None else None

    def _get(self, manifest: Manifest) -> LoadedModel:
        key = (manifest.name, manifest.version)
        with self._lock:
            refused = self._refused.get(key)
            if refused is not None and time.monotonic() - refused[0] < REFUSAL_SECONDS:
                raise IntegrityError(refused[1])
            if key in self._loaded:
                self._loaded.move_to_end(key)
                cached = self._loaded[key]
                if cached.manifest != manifest:  # e.g. explanation defaults stored by a search: same weights
                    cached = LoadedModel(manifest, cached.spec, cached.model)
                    self._loaded[key] = cached
                return cached
            try:
                model = load_published(self.registry, manifest)
            except IntegrityError as exc:
                log.error("refusing %s v%d: %s", manifest.name, manifest.version, exc.message)
                self._refused[key] = (time.monotonic(), exc.message)
                raise
            loaded = LoadedModel(manifest, get_spec(manifest.architecture), model)
            self._loaded[key] = loaded
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return loaded
