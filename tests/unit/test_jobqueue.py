from __future__ import annotations

import time

import pytest

from common.errors import FailedPrecondition, NotFound
from common.jobqueue import CANCELLED, QUEUED, RUNNING, JobQueue


@pytest.fixture
def queue(redis_client, key_prefix) -> JobQueue:
    return JobQueue(redis_client, key_prefix, lease_seconds=0.5, history_ttl_seconds=60)


def test_submit_then_worker_claims_once(queue: JobQueue) -> None:
    record, dedup = queue.submit(spec={"model_name": "m"})
    assert not dedup and record.state == QUEUED
    claim = queue.next_job("w1", block_ms=100)
    assert claim is not None and claim.job_id == record.job_id and not claim.resumed
    assert queue.next_job("w2", block_ms=50) is None  # held by w1
    queue.release(claim, "w1")
    time.sleep(0.6)
    assert queue.next_job("w2", block_ms=50) is None  # acknowledged: never again


def test_dead_worker_job_is_reclaimed_after_lease(queue: JobQueue) -> None:
    record, _ = queue.submit(spec={"model_name": "m"})
    claim = queue.next_job("w1", block_ms=100)
    assert claim is not None
    assert queue.next_job("w2", block_ms=50) is None  # lease alive
    time.sleep(0.7)  # w1 dies: no heartbeat
    again = queue.next_job("w2", block_ms=50)
    assert again is not None and again.job_id == record.job_id and again.resumed


def test_heartbeat_keeps_the_job(queue: JobQueue) -> None:
    queue.submit(spec={"model_name": "m"})
    claim = queue.next_job("w1", block_ms=100)
    for _ in range(4):
        time.sleep(0.25)
        assert queue.heartbeat(claim, "w1")
        assert queue.next_job("w2", block_ms=10) is None


def test_idempotency_key(queue: JobQueue) -> None:
    first, _ = queue.submit(spec={"a": 1}, idempotency_key="k1")
    again, dedup = queue.submit(spec={"a": 1}, idempotency_key="k1")
    assert dedup and again.job_id == first.job_id
    with pytest.raises(FailedPrecondition):
        queue.submit(spec={"a": 2}, idempotency_key="k1")


def test_cancel_queued_job_and_events(queue: JobQueue) -> None:
    record, _ = queue.submit(spec={"a": 1})
    cancelled = queue.request_cancel(record.job_id)
    assert cancelled.state == CANCELLED and queue.is_cancelled(record.job_id)
    events = queue.events(record.job_id)
    assert [e.kind for e in events] == ["message", "finished"]
    assert [e.sequence for e in events] == [1, 2]
    assert queue.events(record.job_id, after=1)[0].kind == "finished"


def test_retry_later_redelivers_after_delay(queue: JobQueue) -> None:
    record, _ = queue.submit(spec={"a": 1})
    claim = queue.next_job("w1", block_ms=100)
    queue.retry_later(claim, "w1", 0.2)
    assert queue.next_job("w1", block_ms=10) is None
    time.sleep(0.3)
    again = queue.next_job("w1", block_ms=100)
    assert again is not None and again.job_id == record.job_id


def test_sweep_children_and_listing(queue: JobQueue) -> None:
    parent, _ = queue.submit(sweep={"x": 1}, children=[{"c": 0}, {"c": 1}])
    assert parent.state == RUNNING and len(parent.child_job_ids) == 2
    kids = queue.list(parent=parent.job_id)
    assert sorted(k.job_id for k in kids) == sorted(parent.child_job_ids)
    assert queue.list(states={QUEUED}, limit=10)
    with pytest.raises(NotFound):
        queue.get("nope")


def test_update_is_atomic_field_merge(queue: JobQueue) -> None:
    record, _ = queue.submit(spec={"a": 1})
    queue.update(record.job_id, progress={"epoch": 1})
    queue.update(record.job_id, worker="w9")
    got = queue.get(record.job_id)
    assert got.progress == {"epoch": 1} and got.worker == "w9"
