"""Audit trail of every verdict, written to Redis off the verdict path.

Keys (P = key prefix):
  P:classifier:audit               capped stream (XADD MAXLEN ~ max_len) of every verdict, flat fields
  P:classifier:audit:part:<part>   newest-first list of that part's records (JSON), capped at
                                   ``per_part_max`` and expiring ``part_ttl_seconds`` after its last write

:meth:`AuditLog.record` only appends to a bounded in-memory buffer; a writer thread drains it in
pipelined batches. A full buffer or a Redis failure never blocks or fails a verdict: the records are
counted as dropped (metric ``zdm_classifier_audit_dropped_total``) and logged, never lost silently.

By default (``linger_ms=0``) the writer wakes as soon as a record arrives; with ``linger_ms`` > 0 it
wakes on that period instead (and at once for :meth:`flush` / :meth:`close`), so a record wakes no
thread and busy lines get larger batches — but on a 2-core host its writes then landed inside
inferences and slowed them more than the per-record wake-up costs (docs/classifier.md).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

import redis

from services.classifier.metrics import ClassifierMetrics

log = logging.getLogger(__name__)

_WRITE_BATCH = 256
_RETRIES = 3


@dataclass(frozen=True)
class AuditEntry:
    image_sha256: str
    model_name: str
    model_version: int
    threshold: float
    probabilities: dict[str, float]
    defective: bool
    timestamp: float
    line_id: str = ""
    part_id: str = ""
    request_id: str = ""
    backend: str = ""
    # Who asked: the name of the caller's token ("anonymous" when authentication is off).
    caller: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        """Flat stream fields (readable with XRANGE)."""
        return {
            "sha256": self.image_sha256,
            "model": self.model_name,
            "version": str(self.model_version),
            "threshold": repr(self.threshold),
            "probabilities": json.dumps(self.probabilities),
            "defective": "1" if self.defective else "0",
            "ts": repr(self.timestamp),
            "line": self.line_id,
            "part": self.part_id,
            "request": self.request_id,
            "backend": self.backend,
            "caller": self.caller,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> AuditEntry:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(
            image_sha256=f.get("sha256", ""),
            model_name=f.get("model", ""),
            model_version=int(f.get("version", "0") or 0),
            threshold=float(f.get("threshold", "0") or 0),
            probabilities=json.loads(f.get("probabilities", "{}") or "{}"),
            defective=f.get("defective") == "1",
            timestamp=float(f.get("ts", "0") or 0),
            line_id=f.get("line", ""),
            part_id=f.get("part", ""),
            request_id=f.get("request", ""),
            backend=f.get("backend", ""),
            caller=f.get("caller", ""),
        )


class AuditLog:
    """Buffered writer and reader of the audit trail.

    Args:
        client: Redis client (bytes replies).
        prefix: key prefix.
        max_len: approximate cap of the stream.
        buffer_size: records held in memory while the writer catches up; beyond it records are dropped
            (and counted).
        per_part_max: records kept per part id.
        part_ttl_seconds: a part's list expires this long after its last record.
        linger_ms: the writer's wake-up period; 0 = wake for every record.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_len: int = 100_000,
        buffer_size: int = 10_000,
        per_part_max: int = 100,
        part_ttl_seconds: int = 30 * 24 * 3600,
        linger_ms: float = 0.0,
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        self._client = client
        self._stream = f"{prefix}:classifier:audit"
        self._part_prefix = f"{prefix}:classifier:audit:part:"
        self._max_len = max_len
        self._per_part_max = per_part_max
        self._part_ttl = part_ttl_seconds
        self._linger = max(0.0, linger_ms) / 1000.0
        self._write_now = threading.Event()
        self._metrics = metrics
        self._buffer: queue.Queue[AuditEntry | None] = queue.Queue(maxsize=buffer_size)
        self._pending = 0  # records accepted but not yet written or dropped
        self._pending_lock = threading.Condition()
        self.dropped = 0
        self._last_drop_log = 0.0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # -- verdict path -----------------------------------------------------------------------------
    def record(self, entry: AuditEntry) -> None:
        """Queue a record; never blocks. A full buffer drops it (counted and logged)."""
        with self._pending_lock:
            self._pending += 1
        try:
            self._buffer.put_nowait(entry)
        except queue.Full:
            self._done(1, dropped="buffer_full")
            return
        if self._metrics is not None:
            self._metrics.audit_buffer.inc()

    # -- reading ----------------------------------------------------------------------------------
    def query(self, part_id: str = "", limit: int = 100) -> list[AuditEntry]:
        """Newest first: the records of one part, or of any part when part_id is empty."""
        limit = limit or 100
        if part_id:
            raw = self._client.lrange(self._part_key(part_id), 0, limit - 1)
            return [AuditEntry(**json.loads(r)) for r in raw]
        return [AuditEntry.from_fields(fields) for _id, fields in self._client.xrevrange(self._stream, count=limit)]

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written (or dropped); False on timeout."""
        end = time.monotonic() + timeout
        self._write_now.set()
        with self._pending_lock:
            while self._pending > 0:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_lock.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered (up to timeout), then stop the writer."""
        self.flush(timeout)
        self._buffer.put(None)
        self._write_now.set()
        self._thread.join(timeout)

    # -- writer -----------------------------------------------------------------------------------
    def _part_key(self, part_id: str) -> str:
        return self._part_prefix + part_id

    def _run(self) -> None:
        backlog = False
        while True:
            if self._linger:
                # A clock (or flush / close) wakes the writer, not each record: queuing a record then
                # wakes no thread, so no write lands on the response path of the verdict that queued it.
                if not backlog and self._write_now.wait(self._linger):
                    self._write_now.clear()
                items = []
            else:
                items = [self._buffer.get()]
            while len(items) < _WRITE_BATCH:
                try:
                    items.append(self._buffer.get_nowait())
                except queue.Empty:
                    break
            backlog = len(items) >= _WRITE_BATCH
            batch = [e for e in items if e is not None]
            if batch:
                if self._metrics is not None:
                    self._metrics.audit_buffer.dec(len(batch))
                self._write(batch)
            if len(batch) < len(items):  # close() queued the end marker
                return

    def _write(self, batch: list[AuditEntry]) -> None:
        for attempt in range(1, _RETRIES + 1):
            try:
                pipe = self._client.pipeline(transaction=False)
                for entry in batch:
                    pipe.xadd(self._stream, entry.to_fields(), maxlen=self._max_len, approximate=True)
                    if entry.part_id:
                        key = self._part_key(entry.part_id)
                        pipe.lpush(key, json.dumps(asdict(entry)))
                        pipe.ltrim(key, 0, self._per_part_max - 1)
                        pipe.expire(key, self._part_ttl)
                pipe.execute()
            except redis.RedisError as exc:
                if attempt < _RETRIES:
                    time.sleep(0.1 * 2**attempt)
                    continue
                log.error("audit: %d records lost, Redis write failed %d times: %s", len(batch), _RETRIES, exc)
                self._done(len(batch), dropped="redis_error")
                return
            if self._metrics is not None:
                self._metrics.audit_written.inc(len(batch))
            self._done(len(batch))
            return

    def _done(self, n: int, dropped: str = "") -> None:
        if dropped:
            self.dropped += n
            if self._metrics is not None:
                self._metrics.audit_dropped.labels(dropped).inc(n)
            now = time.monotonic()
            if now - self._last_drop_log > 5.0:
                self._last_drop_log = now
                log.warning("audit: dropped %d record(s) (%s); %d dropped so far", n, dropped, self.dropped)
        with self._pending_lock:
            self._pending -= n
            if self._pending <= 0:
                self._pending_lock.notify_all()
