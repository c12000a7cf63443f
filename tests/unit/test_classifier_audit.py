"""Classifier audit trail and thresholds on a real Redis: capped stream, per-part index, counted drops."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.errors import InvalidArgument, Unavailable
from services.classifier.audit import AuditEntry, AuditLog
from services.classifier.metrics import ClassifierMetrics
from services.classifier.thresholds import ThresholdStore


def dead_redis() -> redis.Redis:
    """A client of a port nobody listens on, failing fast (no client-side retries)."""
    return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def entry(i: int, part: str = "") -> AuditEntry:
    return AuditEntry(
        image_sha256=f"{i:064x}",
        model_name="m",
        model_version=1,
        threshold=0.5,
        probabilities={"def_front": 0.25, "ok_front": 0.75},
        defective=False,
        timestamp=time.time(),
        line_id="L",
        part_id=part,
    )


@pytest.mark.parametrize("linger_ms", [0.0, 20.0])
def test_records_are_written_capped_and_indexed_by_part(
    redis_client: redis.Redis, key_prefix: str, linger_ms: float
) -> None:
    metrics = ClassifierMetrics()
    audit = AuditLog(
        redis_client, key_prefix, max_len=10, per_part_max=3, part_ttl_seconds=60, linger_ms=linger_ms, metrics=metrics
    )
    try:
        for i in range(200):
            audit.record(entry(i, part="p1" if i % 2 else ""))
        assert audit.flush(10)
        assert redis_client.xlen(f"{key_prefix}:classifier:audit") < 200  # approximate MAXLEN trims
        part = audit.query("p1", limit=10)
        assert [e.image_sha256 for e in part] == [f"{i:064x}" for i in (199, 197, 195)]
        assert part[0].probabilities == {"def_front": 0.25, "ok_front": 0.75} and part[0].line_id == "L"
        assert 0 < redis_client.ttl(f"{key_prefix}:classifier:audit:part:p1") <= 60
        newest = audit.query(limit=2)
        assert [e.image_sha256 for e in newest] == [f"{i:064x}" for i in (199, 198)]
        assert metrics.audit_written._value.get() == 200 and audit.dropped == 0
    finally:
        audit.close()


def test_flush_and_close_wake_the_writer_at_once(redis_client: redis.Redis, key_prefix: str) -> None:
    audit = AuditLog(redis_client, key_prefix, linger_ms=600_000)  # on its own: a write every 10 minutes
    try:
        audit.record(entry(1, part="p9"))
        assert audit.flush(10)
        assert [e.image_sha256 for e in audit.query("p9")] == [f"{1:064x}"]
        audit.record(entry(2, part="p9"))
    finally:
        audit.close(timeout=5)
    assert not audit._thread.is_alive()
    assert [e.image_sha256 for e in audit.query("p9")] == [f"{2:064x}", f"{1:064x}"]  # written on close


def test_drops_are_counted_never_silent() -> None:
    dead = dead_redis()
    metrics = ClassifierMetrics()
    audit = AuditLog(dead, "zdmtest:dead", buffer_size=2, metrics=metrics)
    try:
        for i in range(50):  # the writer is stuck retrying: the buffer fills and further records drop
            audit.record(entry(i))
        assert audit.flush(10)
        assert audit.dropped == 50
        dropped = metrics.audit_dropped
        assert dropped.labels("buffer_full")._value.get() + dropped.labels("redis_error")._value.get() == 50
        assert dropped.labels("redis_error")._value.get() >= 1
    finally:
        audit.close(timeout=1)


def test_thresholds_persist_validate_and_survive_a_redis_outage(redis_client: redis.Redis, key_prefix: str) -> None:
    store = ThresholdStore(redis_client, key_prefix, default=0.5, ttl_seconds=0.0)
    assert store.get("m") == 0.5
    store.set("m", 0.25)
    assert ThresholdStore(redis_client, key_prefix, default=0.5).get("m") == 0.25  # another replica
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgument):
            store.set("m", bad)
    dead = ThresholdStore(dead_redis(), key_prefix, 0.5)
    with pytest.raises(Unavailable):
        dead.get("m")  # never read: refusing beats deciding with a default that may be wrong
    store._client = dead._client  # the known value is kept through an outage
    assert store.get("m") == 0.25
