"""Decision thresholds per model name, persisted in Redis and shared by every classifier replica.

Which threshold decides, in order: one set with ``SetThreshold`` for the model name (an operator's
override, for every version); else the operating point the trainer chose on validation for the
version (``Manifest.decision_threshold``); else the service default (0.5).

Key: ``<prefix>:classifier:thresholds`` (hash model name -> threshold). Reads are cached per name
for ``ttl_seconds``; a change made through one replica is seen by the others within that time (and
at once by the replica that made it).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis

from common.errors import InvalidArgument, Unavailable
from common.manifest import Manifest

log = logging.getLogger(__name__)


def thresholds_key(prefix: str) -> str:
    return f"{prefix}:classifier:thresholds"


class ThresholdStore:
    """Thresholds by model name; names never set use ``default``.

    When Redis cannot be reached, the last value read is used (logged); a name never read before
    fails with Unavailable rather than silently deciding with the default.
    """

    def __init__(self, client: redis.Redis, prefix: str, default: float, ttl_seconds: float = 1.0) -> None:
        self._client = client
        self._key = thresholds_key(prefix)
        self._default = validate_threshold(default)
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float | None, float]] = {}  # name -> (override or None, fetched at)
        self._lock = threading.Lock()

    def get(self, name: str, model_default: float | None = None) -> float:
        """The threshold in force: the override for ``name``, else ``model_default`` (the version's
        operating point), else the service default."""
        override = self.override(name)
        if override is not None:
            return override
        return self._default if model_default is None else model_default

    def override(self, name: str) -> float | None:
        """The threshold set with SetThreshold for ``name``, or None."""
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            raw = self._client.hget(self._key, name)
        except redis.RedisError as exc:
            if cached is not None:
                log.warning("threshold of %r: Redis unreachable (%s); using the last value %s", name, exc, cached[0])
                return cached[0]
            raise Unavailable(f"cannot read the threshold of model {name!r}: Redis unreachable ({exc})") from exc
        value = None if raw is None else float(raw)
        with self._lock:
            self._cache[name] = (value, now)
        return value

    def set(self, name: str, value: float) -> float:
        """Persist a new threshold for ``name``; every version of the model uses it."""
        value = validate_threshold(value)
        try:
            self._client.hset(self._key, name, repr(value))
        except redis.RedisError as exc:
            raise Unavailable(f"cannot store the threshold: Redis unreachable ({exc})") from exc
        with self._lock:
            self._cache[name] = (value, time.monotonic())
        log.info("threshold of %r set to %.4g", name, value)
        return value


def validate_threshold(value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"threshold must be a number in [0, 1], got {value}")
    return value


def operating_threshold(manifest: Manifest, default: float) -> float:
    """The threshold a version was validated for: its manifest's operating point, else ``default``.

    The one place that reads it, so backend verification judges verdicts where they will be made.
    Manifests gain ``operating_point`` with the trainer's threshold choice; older ones lack it.
    """
    point = getattr(manifest, "operating_point", None)
    threshold = getattr(point, "threshold", None)
    return validate_threshold(default if threshold is None else threshold)
