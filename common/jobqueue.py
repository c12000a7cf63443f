"""Training job queue on Redis Streams with a consumer group.

Keys (P = key prefix):
  P:jobs                 stream of {job_id}; group "workers"; at-least-once delivery
  P:job:<id>             JSON job record (JobRecord)
  P:job:<id>:events      stream of job events; ids "0-<n>" so n is the event's sequence
  P:job:<id>:lease       worker holding the job (PX = lease); heartbeats extend it
  P:job:<id>:cancel      cancel flag, observed by the worker between batches
  P:jobs:index           sorted set job_id -> created_at (ListJobs)
  P:jobs:delayed         sorted set job_id -> due time (retries with backoff)
  P:idem:<key>           idempotency key -> job_id
  P:deadletter           stream of {job_id, reason}

A worker holds a job by its lease. Heartbeats also reset the stream entry's idle time, so
XAUTOCLAIM with min-idle = lease only picks up entries whose holder stopped heartbeating; the
claimer then checks the lease key as well before it resumes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel, Field

from common.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

GROUP = "workers"

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, RETRYING = (
    "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "RETRYING",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class JobRecord(BaseModel):
    """A job as stored in Redis. spec / sweep are proto3-JSON dicts (snake_case field names)."""

    job_id: str
    state: str = QUEUED
    spec: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    attempt: int = 0
    max_attempts: int = 3
    worker: str = ""
    created_at: float = Field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    progress: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0
    unreadable_images: int = 0
    parent_job_id: str = ""
    child_job_ids: list[str] = Field(default_factory=list)
    checkpoint_epoch: int = 0
    idempotency_key: str = ""
    dataset_report: dict[str, Any] = Field(default_factory=dict)  # proto3-JSON DatasetReport from submit time
    # W3C trace context of the submitting call (traceparent, tracestate): the worker's span continues that trace.
    trace: dict[str, str] = Field(default_factory=dict)


@dataclass
class Event:
    sequence: int
    timestamp: float
    state: str
    kind: str  # "progress" | "epoch" | "message" | "finished"
    data: dict[str, Any]


@dataclass
class Claim:
    """A job a worker holds: the stream entry to acknowledge and whether it is a resumption."""

    job_id: str
    entry_id: str
    resumed: bool


def spec_digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class JobQueue:
    def __init__(self, client: redis.Redis, prefix: str, *, lease_seconds: float = 30.0,
                 history_ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.p = prefix
        self.lease_ms = int(lease_seconds * 1000)
        self.history_ttl = history_ttl_seconds
        self.stream = f"{prefix}:jobs"
        self._ensure_group()

    # -- keys ----------------------------------------------------------------------------------
    def _job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:events"

    def _lease(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:lease"

    def _cancel(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:cancel"

    def _ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- records -------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        raw = self.r.get(self._job(job_id))
        if raw is None:
            raise NotFound(f"unknown job {job_id!r}")
        return JobRecord.model_validate_json(raw)

    def save(self, record: JobRecord) -> None:
        key = self._job(record.job_id)
        if record.state in TERMINAL:
            pipe = self.r.pipeline()
            pipe.set(key, record.model_dump_json(), ex=self.history_ttl)
            pipe.expire(self._events(record.job_id), self.history_ttl)
            pipe.execute()
        else:
            self.r.set(key, record.model_dump_json())

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Read-modify-write under WATCH so concurrent writers (cancel vs worker) never lose a field."""
        key = self._job(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"unknown job {job_id!r}")
                    record = JobRecord.model_validate_json(raw).model_copy(update=fields)
                    pipe.multi()
                    ttl = self.history_ttl if record.state in TERMINAL else None
                    pipe.set(key, record.model_dump_json(), ex=ttl)
                    if ttl:
                        pipe.expire(self._events(job_id), ttl)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def list(self, states: set[str] | None = None, limit: int = 100, parent: str = "") -> list[JobRecord]:
        index = f"{self.p}:jobs:index"
        out: list[JobRecord] = []
        start = 0
        while len(out) < limit:
            ids = self.r.zrevrange(index, start, start + 199)
            if not ids:
                break
            start += len(ids)
            raws = self.r.mget([self._job(i.decode()) for i in ids])
            for job_id, raw in zip(ids, raws, strict=True):
                if raw is None:  # expired history
                    self.r.zrem(index, job_id)
                    continue
                record = JobRecord.model_validate_json(raw)
                if states and record.state not in states:
                    continue
                if parent and record.parent_job_id != parent:
                    continue
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    # -- submit --------------------------------------------------------------------------------
    def submit(self, *, spec: dict[str, Any] | None = None, sweep: dict[str, Any] | None = None,
               children: list[dict[str, Any]] | None = None, max_attempts: int = 3,
               idempotency_key: str = "", trace: dict[str, str] | None = None) -> tuple[JobRecord, bool]:
        """Store and enqueue a job (or a sweep parent plus its children). Returns (record, deduplicated).

        ``trace``: the submitter's trace context, stored with the job and each child.
        """
        job_id = uuid.uuid4().hex[:16]
        if idempotency_key:
            digest = spec_digest({"spec": spec, "sweep": sweep})
            idem_key = f"{self.p}:idem:{idempotency_key}"
            stored = json.dumps({"job_id": job_id, "digest": digest})
            if not self.r.set(idem_key, stored, nx=True, ex=self.history_ttl):
                existing = json.loads(self.r.get(idem_key) or "{}")
                if existing.get("digest") != digest:
                    raise FailedPrecondition(
                        f"idempotency key {idempotency_key!r} was used for a different job "
                        f"({existing.get('job_id')})"
                    )
                return self.get(existing["job_id"]), True
        record = JobRecord(job_id=job_id, spec=spec, sweep=sweep, max_attempts=max_attempts,
                           idempotency_key=idempotency_key, trace=trace or {})
        child_records = [
            JobRecord(job_id=f"{job_id}-{i}", spec=child, max_attempts=max_attempts, parent_job_id=job_id,
                      trace=trace or {})
            for i, child in enumerate(children or [])
        ]
        record.child_job_ids = [c.job_id for c in child_records]
        if child_records:
            record.state = RUNNING
        for rec in [record, *child_records]:
            self.save(rec)
            self.r.zadd(f"{self.p}:jobs:index", {rec.job_id: rec.created_at})
        self.emit(job_id, "message", {"message": "submitted"}, record.state)
        for rec in child_records if child_records else [record]:
            self._enqueue(rec.job_id)
        return record, False

    def _enqueue(self, job_id: str) -> None:
        self.r.xadd(self.stream, {"job_id": job_id})

    # -- events --------------------------------------------------------------------------------
    def emit(self, job_id: str, kind: str, data: dict[str, Any], state: str) -> int:
        entry = self.r.xadd(
            self._events(job_id),
            {"kind": kind, "state": state, "ts": repr(time.time()), "data": json.dumps(data)},
            id="0-*",
        )
        return int(entry.decode().split("-")[1])

    def events(self, job_id: str, after: int = 0, block_ms: int | None = None,
               count: int = 100) -> list[Event]:
        streams = {self._events(job_id): f"0-{after}"}
        reply = self.r.xread(streams, count=count, block=block_ms)
        out: list[Event] = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                out.append(Event(
                    sequence=int(entry_id.decode().split("-")[1]),
                    timestamp=float(fields[b"ts"]),
                    state=fields[b"state"].decode(),
                    kind=fields[b"kind"].decode(),
                    data=json.loads(fields[b"data"]),
                ))
        return out

    # -- cancel --------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.state in TERMINAL:
            return record
        self.r.set(self._cancel(job_id), "1", ex=self.history_ttl)
        for child in record.child_job_ids:
            self.request_cancel(child)
        if record.state in (QUEUED, RETRYING) or record.child_job_ids:
            self.r.zrem(f"{self.p}:jobs:delayed", job_id)
            record = self.update(job_id, state=CANCELLED, finished_at=time.time(), error="cancelled")
            self.emit(job_id, "finished", {"job": record.model_dump()}, CANCELLED)
        return record

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.r.exists(self._cancel(job_id)))

    # -- worker side ---------------------------------------------------------------------------
    def next_job(self, consumer: str, block_ms: int = 1000) -> Claim | None:
        """Due retries are enqueued, then a dead worker's job is reclaimed, else a new entry is read."""
        self._promote_delayed()
        claim = self._reclaim(consumer)
        if claim:
            return claim
        reply = self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                job_id = fields[b"job_id"].decode()
                if self._take_lease(job_id, consumer):
                    return Claim(job_id, entry_id.decode(), resumed=False)
                log.warning("job %s delivered but its lease is held; leaving it pending", job_id)
        return None

    def _reclaim(self, consumer: str) -> Claim | None:
        _next, entries, *_ = self.r.xautoclaim(self.stream, GROUP, consumer, min_idle_time=self.lease_ms,
                                              start_id="0-0", count=10)
        for entry_id, fields in entries:
            if not fields:  # entry deleted from the stream
                self.r.xack(self.stream, GROUP, entry_id)
                continue
            job_id = fields[b"job_id"].decode()
            if self._take_lease(job_id, consumer):
                return Claim(job_id, entry_id.decode(), resumed=True)
        return None

    def _take_lease(self, job_id: str, consumer: str) -> bool:
        return bool(self.r.set(self._lease(job_id), consumer, nx=True, px=self.lease_ms))

    def heartbeat(self, claim: Claim, consumer: str) -> bool:
        """Extend the lease and reset the entry's idle time; False when the lease was lost."""
        holder = self.r.get(self._lease(claim.job_id))
        if holder is not None and holder.decode() != consumer:
            return False
        self.r.set(self._lease(claim.job_id), consumer, px=self.lease_ms)
        self.r.xclaim(self.stream, GROUP, consumer, 0, [claim.entry_id], justid=True)
        return True

    def release(self, claim: Claim, consumer: str) -> None:
        """Acknowledge the entry and drop the lease: the job will not be delivered again."""
        self.r.xack(self.stream, GROUP, claim.entry_id)
        holder = self.r.get(self._lease(claim.job_id))
        if holder is not None and holder.decode() == consumer:
            self.r.delete(self._lease(claim.job_id))

    def retry_later(self, claim: Claim, consumer: str, delay_seconds: float) -> None:
        self.r.zadd(f"{self.p}:jobs:delayed", {claim.job_id: time.time() + delay_seconds})
        self.release(claim, consumer)

    def _promote_delayed(self) -> None:
        key = f"{self.p}:jobs:delayed"
        for job_id in self.r.zrangebyscore(key, 0, time.time(), start=0, num=10):
            if self.r.zrem(key, job_id):  # only the worker that removed it enqueues it
                self._enqueue(job_id.decode())

    def outstanding(self) -> int:
        """Jobs delivered but not acknowledged (running or held by a dead worker) plus delayed retries.

        A burst-mode worker keeps waiting while this is non-zero: such jobs may still come back to it.
        """
        pending = self.r.xpending(self.stream, GROUP)
        return int(pending["pending"]) + int(self.r.zcard(f"{self.p}:jobs:delayed"))

    def waiting(self) -> int:
        """Jobs enqueued but not yet delivered to any worker (the group's lag), plus delayed retries."""
        lag = 0
        for group in self.r.xinfo_groups(self.stream):
            name = group.get("name")
            if name in (GROUP, GROUP.encode()):
                lag = int(group.get("lag") or 0)
        return lag + int(self.r.zcard(f"{self.p}:jobs:delayed"))

    def dead_letter(self, job_id: str, reason: str) -> None:
        self.r.xadd(f"{self.p}:deadletter", {"job_id": job_id, "reason": reason, "ts": repr(time.time())},
                    maxlen=10_000, approximate=True)

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        return [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _id, fields in self.r.xrevrange(f"{self.p}:deadletter", count=count)
        ]
