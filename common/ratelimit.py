"""Per-caller token buckets for the costly RPCs (Explain, EvaluateDataset, SearchDefaults)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


class RateLimiter:
    """One bucket per (caller, method): ``per_minute`` calls a minute, bursts of up to a minute's worth.

    Args:
        per_minute: "package.Service/Method" -> calls per minute; methods not named are unlimited.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, per_minute: Mapping[str, float], clock: Callable[[], float] = time.monotonic) -> None:
        self._rates = {method: rate / 60.0 for method, rate in per_minute.items() if rate > 0}
        self._capacity = {method: max(1.0, rate) for method, rate in per_minute.items() if rate > 0}
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (caller, method) -> (tokens, at)

    def acquire(self, caller: str, method: str) -> float:
        """Take one call; returns 0 when allowed, else the seconds until the next call would be."""
        rate = self._rates.get(method)
        if rate is None:
            return 0.0
        capacity = self._capacity[method]
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get((caller, method), (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[(caller, method)] = (tokens - 1.0, now)
                return 0.0
            self._buckets[(caller, method)] = (tokens, now)
            return (1.0 - tokens) / rate
