"""Which model versions the classifier serves: loading, leases, hot reload.

Targets and versions
    A request names a model (or none: the default model), and either pins a version or leaves the
    version to an alias (none: ``default_alias``, else the newest version). Each (name, alias) a
    request has asked for becomes a *target* that the store keeps resolved to one loaded version; a
    pinned (name, version) is loaded lazily and kept in an LRU pool of ``max_loaded_models``.

    The default model is ``settings.default_model``, or, when that is empty, the model of the most
    recently published version in the registry (re-evaluated on every reload).

Hot reload
    A publish announcement (:mod:`common.model_events`) or the periodic registry poll re-resolves
    the targets. A new version is loaded and warmed off to the side, then swapped in under the lock;
    requests that already hold a lease on the old version finish on it, and the old version's batcher
    is closed only after its last lease is released. So a swap never fails a request.

Leases
    :meth:`ModelStore.acquire` returns a :class:`LoadedModel` with a lease taken; the caller must
    :meth:`ModelStore.release` it once its result is in (``with store.lease(...)`` does both).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np
import redis

from common import model_events
from common.errors import NotFound, Unavailable, ZdmError
from common.manifest import Manifest
from common.registry import Registry
from common.settings import ClassifierSettings
from services.classifier.backends import Backend
from services.classifier.batcher import Batcher
from services.classifier.metrics import ClassifierMetrics

log = logging.getLogger(__name__)

BackendFactory = Callable[[Manifest], Backend]
Key = tuple[str, int]  # (name, version)
Target = tuple[str, str]  # (name, alias); alias "" = the default resolution


class LoadedModel:
    """One loaded version: its manifest, backend and batcher. Read-only for callers."""

    def __init__(self, manifest: Manifest, backend: Backend, batcher: Batcher) -> None:
        self.manifest = manifest
        self.backend = backend
        self.batcher = batcher
        self.loaded_at = time.time()
        self.defect_index = manifest.defect_index
        self.defect_indices = manifest.defect_indices
        self._users = 0
        self._retired = False

    @property
    def key(self) -> Key:
        return (self.manifest.name, self.manifest.version)

    @property
    def label(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"


def backend_factory(registry: Registry, settings: ClassifierSettings) -> BackendFactory:
    """The production factory: safetensors -> torch module -> the configured backend (cached conversion)."""
    from common.models.loading import load_published_verified
    from services.classifier.backends import BackendOptions, create_backend
    from services.classifier.verification import verifier_for

    options = BackendOptions(
        num_threads=settings.inference_threads or None,
        precision=settings.precision,  # type: ignore[arg-type]
    )

    def build(manifest: Manifest) -> Backend:
        # Keyed by the hash of the bytes actually loaded, never by the manifest's claim alone.
        model, cache_key = load_published_verified(registry, manifest)
        return create_backend(
            settings.backend,
            model,
            manifest.preprocessing.image_size,  # type: ignore[arg-type]
            settings.common.cache_dir,
            cache_key,
            device=settings.device,
            options=options,
            verifier=verifier_for(registry, manifest, model, settings.default_threshold, settings.verify_tolerance),
        )

    return build


class ModelStore:
    """Serves model versions by name + alias or pinned version; reloads them as the registry changes.

    Args:
        registry: where published models live.
        settings: batching, aliases, default model, pool size, poll period.
        factory: builds a backend for a manifest; defaults to :func:`backend_factory`.
        metrics: model info and load counts (and the batchers' metrics).
        redis_client: subscribes to publish announcements when given; polling alone otherwise.
        on_ready: called with True once the first model is loaded (and False if none is left).
    """

    def __init__(
        self,
        registry: Registry,
        settings: ClassifierSettings,
        *,
        factory: BackendFactory | None = None,
        metrics: ClassifierMetrics | None = None,
        redis_client: redis.Redis | None = None,
        on_ready: Callable[[bool], None] | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._factory = factory or backend_factory(registry, settings)
        self._metrics = metrics
        self._redis = redis_client
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._pool: OrderedDict[Key, LoadedModel] = OrderedDict()
        self._targets: dict[Target, LoadedModel] = {}
        self._loading: dict[Key, Future[None]] = {}
        self._failures: dict[Key, tuple[float, str]] = {}
        self._default_name = settings.default_model
        self._ready = False
        self._stop = threading.Event()
        self._events: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._last_refresh_error = ""

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reload thread (it loads the default model first) and the event listener."""
        self._threads.append(threading.Thread(target=self._reload_loop, name="model-reload", daemon=True))
        if self._redis is not None:
            self._threads.append(threading.Thread(target=self._listen_loop, name="model-events", daemon=True))
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        self._events.put(None)
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            models = list(self._pool.values())
            self._pool.clear()
            self._targets.clear()
        for model in models:
            model.batcher.close()
            self._unloaded(model)

    @property
    def ready(self) -> bool:
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self._ready:
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    # -- leases -----------------------------------------------------------------------------------
    def acquire(self, name: str = "", version: int = 0, alias: str = "") -> LoadedModel:
        """The model version a request asked for, with a lease taken (release it!).

        Raises:
            Unavailable: no model is published (and none named), or the version failed to load recently.
            NotFound: unknown model, version or alias.
        """
        if not name:
            name = self._default_name
            if not name:
                raise Unavailable("no model is loaded: the registry has no published model yet")
        if version:
            with self._lock:
                model = self._pool.get((name, version))
                if model is not None and not model._retired:
                    self._pool.move_to_end(model.key)
                    model._users += 1
                    return model
            return self._get_or_load(self._registry.manifest(name, version), None)
        target = (name, alias)
        with self._lock:
            model = self._targets.get(target)
            if model is not None:
                model._users += 1
                return model
        manifest = self._registry.resolve(name, 0, alias, self._settings.default_alias)
        return self._get_or_load(manifest, target)

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model._users -= 1
            close = model._retired and model._users == 0
        if close:
            self._close(model)

    @contextlib.contextmanager
    def lease(self, name: str = "", version: int = 0, alias: str = "") -> Iterator[LoadedModel]:
        model = self.acquire(name, version, alias)
        try:
            yield model
        finally:
            self.release(model)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._pool.values())

    def default_name(self) -> str:
        return self._default_name

    # -- loading ----------------------------------------------------------------------------------
    def _get_or_load(self, manifest: Manifest, target: Target | None) -> LoadedModel:
        """Return the loaded version (lease taken), loading it once however many callers ask at once."""
        key = (manifest.name, manifest.version)
        while True:
            with self._lock:
                model = self._pool.get(key)
                if model is not None and not model._retired:
                    self._pool.move_to_end(key)
                    if target is not None and target not in self._targets:
                        self._targets[target] = model
                    model._users += 1
                    return model
                pending = self._loading.get(key)
                if pending is None:
                    self._check_recent_failure(key)
                    pending = self._loading[key] = Future()
                    owner = True
                else:
                    owner = False
            if not owner:
                pending.result()  # the owner's error, if it failed
                continue
            try:
                model = self._load(manifest)
            except BaseException as exc:
                with self._lock:
                    del self._loading[key]
                    self._failures[key] = (time.monotonic(), str(exc))
                pending.set_exception(exc)
                raise
            with self._lock:
                del self._loading[key]
                self._failures.pop(key, None)
                self._pool[key] = model
                if target is not None and target not in self._targets:
                    self._targets[target] = model
                model._users += 1
                evicted = self._evict_locked()
            pending.set_result(None)
            for old in evicted:
                self._retire(old)
            self._set_ready(True)
            return model

    def _check_recent_failure(self, key: Key) -> None:
        failure = self._failures.get(key)
        if failure is not None and time.monotonic() - failure[0] < self._settings.load_retry_seconds:
            ago = time.monotonic() - failure[0]
            raise Unavailable(f"model {key[0]}:{key[1]} failed to load {ago:.0f} s ago: {failure[1]}")

    def _load(self, manifest: Manifest) -> LoadedModel:
        label = f"{manifest.name}:{manifest.version}"
        start = time.perf_counter()
        try:
            backend = self._factory(manifest)
            _warm(backend, manifest.preprocessing.image_size, self._settings.max_batch_size)
        except Exception:
            if self._metrics is not None:
                self._metrics.model_loads.labels("error").inc()
            log.exception("loading model %s failed", label)
            raise
        batcher = Batcher(
            backend.infer,
            max_batch_size=self._settings.max_batch_size,
            max_queue_delay_ms=self._settings.max_queue_delay_ms,
            label=label,
            metrics=self._metrics,
        )
        if self._metrics is not None:
            self._metrics.model_loaded(manifest.name, manifest.version, backend.name)
            self._metrics.backend_rejections(getattr(backend, "verification", None))
        log.info("loaded model %s on %s in %.2f s", label, backend.name, time.perf_counter() - start)
        return LoadedModel(manifest, backend, batcher)

    def _evict_locked(self) -> list[LoadedModel]:
        """Drop least recently used versions no target serves, beyond the pool size."""
        serving = {id(m) for m in self._targets.values()}
        evicted = []
        for key in list(self._pool):
            if len(self._pool) <= self._settings.max_loaded_models:
                break
            model = self._pool[key]
            if id(model) not in serving:
                del self._pool[key]
                evicted.append(model)
        return evicted

    def _retire(self, model: LoadedModel) -> None:
        """Stop serving a version; its batcher closes when the last lease is released."""
        with self._lock:
            if self._pool.get(model.key) is model:
                del self._pool[model.key]
            model._retired = True
            close = model._users == 0
        log.info("unloading model %s", model.label)
        if close:
            self._close(model)
        if not self.loaded():
            self._set_ready(False)

    def _close(self, model: LoadedModel) -> None:
        model.batcher.close()
        self._unloaded(model)

    def _unloaded(self, model: LoadedModel) -> None:
        if self._metrics is not None:
            self._metrics.model_unloaded(model.manifest.name, model.manifest.version, model.backend.name)

    def _set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        log.info("model store %s", "ready" if ready else "has no model loaded")
        if self._on_ready is not None:
            self._on_ready(ready)

    # -- reload -----------------------------------------------------------------------------------
    def refresh(self, name: str | None = None) -> None:
        """Re-resolve the default model and the targets (of ``name`` only, when given); swap changed ones.

        Runs in the reload thread; tests may call it directly.
        """
        self._refresh_default()
        with self._lock:
            targets = [t for t in self._targets if name is None or t[0] == name]
        if self._default_name and (self._default_name, "") not in targets and (name is None or name == self._default_name):
            targets.append((self._default_name, ""))
        for target in targets:
            try:
                self._refresh_target(target)
            except NotFound as exc:
                if target[1]:  # the alias is gone: requests naming it get NOT_FOUND from now on
                    self._drop_target(target, exc.message)
                else:  # the model's versions are gone; keep serving what is loaded rather than nothing
                    log.warning("model %s: %s; keeping the loaded version", target[0], exc.message)
            except ZdmError as exc:
                log.warning("cannot refresh model %s (alias %r): %s", target[0], target[1], exc.message)
            except Exception as exc:  # noqa: BLE001 - _load logged the traceback; keep serving the current one
                log.error("refreshing model %s (alias %r) failed; the current version stays: %s", *target, exc)

    def _refresh_default(self) -> None:
        if self._settings.default_model:
            return
        newest = self._registry.newest()
        name = newest.name if newest is not None else ""
        if name and name != self._default_name:
            log.info("default model is now %r (most recently published)", name)
            self._default_name = name

    def _refresh_target(self, target: Target) -> None:
        name, alias = target
        manifest = self._registry.resolve(name, 0, alias, self._settings.default_alias)
        with self._lock:
            current = self._targets.get(target)
        if current is not None and current.key == (manifest.name, manifest.version):
            return
        model = self._get_or_load(manifest, None)  # loaded and warmed while the old one still serves
        with self._lock:
            old = self._targets.get(target)
            self._targets[target] = model
            model._users -= 1  # the lease _get_or_load took for us
            orphan = old is not None and old is not model and all(m is not old for m in self._targets.values())
        log.info(
            "model %s (alias %r) now serves version %d (was %s)",
            name,
            alias or self._settings.default_alias,
            manifest.version,
            old.manifest.version if old is not None else "none",
        )
        if orphan and old is not None:
            self._retire(old)

    def _drop_target(self, target: Target, reason: str) -> None:
        with self._lock:
            model = self._targets.pop(target, None)
            orphan = model is not None and all(m is not model for m in self._targets.values())
        log.info("model %s no longer serves alias %r: %s", target[0], target[1], reason)
        if orphan and model is not None:
            self._retire(model)

    def _reload_loop(self) -> None:
        poll = max(0.05, self._settings.reload_poll_seconds)
        self._safe_refresh(None)
        next_poll = time.monotonic() + poll
        while not self._stop.is_set():
            try:
                name = self._events.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                self._safe_refresh(None)
                next_poll = time.monotonic() + poll
                continue
            if name is None:
                return
            self._safe_refresh(name)

    def _safe_refresh(self, name: str | None) -> None:
        """refresh() that never kills the reload thread; a failure repeating every poll is logged in one line."""
        try:
            self.refresh(name)
        except Exception as exc:  # noqa: BLE001 - logged; the loaded versions keep serving
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_refresh_error:
                log.exception("model refresh failed; the loaded versions keep serving")
            else:
                log.error("model refresh failed again: %s", message)
            self._last_refresh_error = message
        else:
            self._last_refresh_error = ""

    def _on_event(self, name: str, version: int) -> None:
        log.info("publish announced: %s version %d", name, version)
        self._events.put(name)

    def _listen_loop(self) -> None:
        assert self._redis is not None
        while not self._stop.is_set():
            try:
                model_events.listen(self._redis, self._settings.common.key_prefix, self._on_event, self._stop.is_set)
            except redis.RedisError as exc:
                log.warning("model events: %s; retrying in 2 s (the registry poll still runs)", exc)
                self._stop.wait(2.0)


def _warm(backend: Backend, image_size: int, max_batch_size: int) -> None:
    """Run the batch sizes the batcher will use most, so the first requests do not pay for them."""
    n = 1
    while True:
        backend.infer(np.zeros((n, 3, image_size, image_size), np.float32))
        if n >= max_batch_size:
            return
        n = min(n * 2, max_batch_size)
