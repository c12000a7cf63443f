"""The trainer worker: bootstrap → loop (claim a job, heartbeat, fit, publish, release) → teardown.

Queue semantics (see common/jobqueue.py): at-least-once delivery; a job is held by a heartbeat
lease; a worker that dies loses the lease and another worker resumes the job from its last epoch
checkpoint. Outcomes of one attempt:

- success: publish (once per job, even across retries), SUCCEEDED, acknowledge;
- cancel (observed between batches): CANCELLED, acknowledge;
- a domain error about the job itself (bad spec, missing dataset): FAILED at once, dead-lettered;
- any other error: RETRYING with exponential backoff, until max_attempts, then FAILED + dead-letter;
- shutdown (first SIGTERM): stop after the current batch and hand the job back at once, without
  using up an attempt; it resumes from its last epoch checkpoint on the next worker;
- lease lost (this worker stalled and another took over): stop quietly, touch nothing.

Run standalone (scale-out) with ``python -m services.trainer.worker [--burst]``; the server
process (``python -m services.trainer``) runs ``settings.workers`` of these loops in threads.
A job with ``recipe.devices`` > 1 trains on data-parallel rank processes that the worker starts
and supervises for the job (``services.trainer.distributed``); the outcomes above are the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from common import log as log_context
from common import tracing
from common.errors import Cancelled, InvalidArgument, NotFound, ZdmError
from common.grpc_server import stop_on_signals
from common.jobqueue import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Claim,
    JobQueue,
    JobRecord,
)
from common.log import setup_logging
from common.redis_conn import connect, require_url
from common.registry import Registry
from common.settings import TrainerSettings
from common.telemetry import ServiceTelemetry
from services.trainer import checkpoints
from services.trainer.dataset_check import check_dataset
from services.trainer.distributed import fit_distributed
from services.trainer.gate import evaluate_gate
from services.trainer.metrics import TrainerMetrics
from services.trainer.publish import publish
from services.trainer.spec import parse_job_spec
from services.trainer.sweep import on_child_finished
from services.trainer.training import BatchProgress, EpochReport, FitHooks, FitOptions, StartInfo, fit

log = logging.getLogger(__name__)

class Interrupted(Exception):
    """The worker is shutting down: hand the job back for another worker to resume."""


class LeaseLost(Exception):
    """Another worker holds the job now (this one stalled past its lease): stop without side effects."""


class GateRejected(Exception):
    """The model failed the quality gate and the job asked to fail: nothing published, FAILED with the figures."""

    def __init__(self, reason: str, result: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


def split_metrics(split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics dict as a proto3-JSON SplitMetrics (a missing loss is left out)."""
    return {"split": split, **{k: v for k, v in metrics.items() if v is not None}}


class _Heartbeat:
    """Extends a claim's lease every ``interval`` seconds in a daemon thread; records a lost lease."""

    def __init__(self, queue: JobQueue, claim: Claim, consumer: str, interval: float) -> None:
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(queue, claim, consumer, interval),
                                        name=f"heartbeat-{claim.job_id}", daemon=True)

    def _run(self, queue: JobQueue, claim: Claim, consumer: str, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not queue.heartbeat(claim, consumer):
                    log.warning("lease of job %s was taken over by another worker", claim.job_id)
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # a blip: the lease survives until it expires
                log.warning("heartbeat of job %s failed: %s", claim.job_id, exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Worker:
    def __init__(self, settings: TrainerSettings, client: redis.Redis, *, registry: Registry | None = None,
                 name: str = "", device: str | None = None, progress_interval: float = 0.5,
                 metrics: TrainerMetrics | None = None, tracer_provider: tracing.TracerProvider | None = None) -> None:
        self.settings = settings
        self.client = client
        self.prefix = settings.common.key_prefix
        self.queue = JobQueue(client, self.prefix, lease_seconds=settings.lease_seconds,
                              history_ttl_seconds=settings.history_ttl_seconds)
        self.registry = registry or Registry(settings.common.registry)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.device = device
        self.progress_interval = progress_interval  # seconds between two progress events of a job
        self.metrics = metrics if metrics is not None else TrainerMetrics()
        self.tracer_provider = tracer_provider  # None: the process's (a no-op unless tracing is configured)
        self._stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current batch; a running job is handed back for another worker."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, burst: bool = False, poll_ms: int = 500) -> int:
        """Process jobs until stopped (or, in burst mode, until nothing is left); returns jobs processed."""
        log.info("worker %s started (lease %.1fs, heartbeat %.1fs)", self.name, self.settings.lease_seconds,
                 self.settings.heartbeat_seconds)
        processed = 0
        while not self._stop.is_set():
            try:
                claim = self.queue.next_job(self.name, block_ms=poll_ms)
            except redis.RedisError as exc:
                log.warning("queue unavailable: %s", exc)
                self._stop.wait(1.0)
                continue
            if claim is None:
                if burst and self.queue.outstanding() == 0:
                    break
                continue
            try:
                self.process(claim)
            except Exception:  # noqa: BLE001 - e.g. Redis gone mid-job: the lease expires, another worker resumes
                log.exception("worker %s could not settle job %s; it will be resumed after its lease", self.name,
                              claim.job_id)
            processed += 1
        log.info("worker %s stopped after %d job(s)", self.name, processed)
        return processed

    # -- one job --------------------------------------------------------------------------------
    def process(self, claim: Claim) -> None:
        token = log_context.job_id.set(claim.job_id)
        try:
            self._process(claim)
        finally:
            log_context.job_id.reset(token)

    def _emit(self, job_id: str, kind: str, data: dict[str, Any], state: str = RUNNING) -> None:
        self.queue.emit(job_id, kind, data, state)

    def _message(self, job_id: str, text: str, state: str = RUNNING) -> None:
        log.info("%s", text)
        self._emit(job_id, "message", {"message": text}, state)

    def _process(self, claim: Claim) -> None:
        job_id = claim.job_id
        try:
            record = self.queue.get(job_id)
        except NotFound:
            log.warning("job %s has no record (expired?): dropping it", job_id)
            self.queue.release(claim, self.name)
            return
        if record.state in TERMINAL or self.queue.is_cancelled(job_id):
            if record.state not in TERMINAL:
                self._finish(claim, record, CANCELLED, error="cancelled before it started")
            else:
                self.queue.release(claim, self.name)
            return
        attempt = record.attempt + 1
        if attempt > record.max_attempts:
            self._fail(claim, record, f"gave up after {record.attempt} attempt(s); last error: "
                                      f"{record.error or 'the worker running it was lost'}")
            return
        # The span continues the trace of the SubmitJob call that created the job.
        with tracing.job_span("zdm.trainer.job", record.trace, self.tracer_provider, **{
                "zdm.job_id": job_id, "zdm.attempt": attempt, "zdm.parent_job_id": record.parent_job_id or None,
                "messaging.system": "redis", "messaging.operation": "process"}):
            self.metrics.running.inc()
            started = time.monotonic()
            outcome = "error"
            try:
                outcome = self._attempt(claim, record, attempt)
            finally:
                self.metrics.running.dec()
                self.metrics.attempt_seconds.labels(outcome).observe(time.monotonic() - started)

    def _attempt(self, claim: Claim, record: JobRecord, attempt: int) -> str:
        """Run one attempt and settle it; returns its outcome (a final state, "retry", "handed_back", "lease_lost")."""
        job_id = claim.job_id
        record = self.queue.update(job_id, state=RUNNING, attempt=attempt, worker=self.name,
                                   started_at=record.started_at or time.time(), error="")
        self._message(job_id, f"attempt {attempt}/{record.max_attempts} started on worker {self.name}"
                              + (" (lease of a lost worker taken over)" if claim.resumed else ""))
        # The heartbeat stops before any ending, so it cannot extend a lease that was just released.
        error: BaseException | None = None
        manifest_ref: dict[str, Any] = {}
        with _Heartbeat(self.queue, claim, self.name, self.settings.heartbeat_seconds) as heartbeat:
            try:
                manifest_ref = self._train_and_publish(claim, record, heartbeat)
            except Exception as exc:  # noqa: BLE001 - every outcome is handled below
                error = exc
        if error is None:
            self._finish(claim, self.queue.get(job_id), SUCCEEDED, result=manifest_ref)
            return SUCCEEDED
        if isinstance(error, LeaseLost):
            log.warning("job %s: lease lost, leaving it to its new holder", job_id)
            return "lease_lost"
        if isinstance(error, GateRejected):  # a finished outcome, not an error to retry or dead-letter
            self._finish(claim, self.queue.get(job_id), FAILED, error=error.reason, result=error.result)
            return FAILED
        if isinstance(error, Interrupted):
            self._hand_back(claim, record, str(error))
            return "handed_back"
        if isinstance(error, Cancelled):
            self._finish(claim, self.queue.get(job_id), CANCELLED, error="cancelled")
            return CANCELLED
        if isinstance(error, ZdmError) and not error.retryable:
            self._fail(claim, self.queue.get(job_id), f"{type(error).__name__}: {error.message}")
            return FAILED
        log.error("job %s attempt %d failed", job_id, attempt, exc_info=error)
        return self._retry_or_fail(claim, self.queue.get(job_id), f"{type(error).__name__}: {error}")

    def _hooks(self, job_id: str, heartbeat: _Heartbeat) -> FitHooks:
        queue = self.queue

        def check() -> None:
            if heartbeat.lost.is_set():
                raise LeaseLost(job_id)
            if self._stop.is_set():
                raise Interrupted("worker shutting down")
            if queue.is_cancelled(job_id):
                raise Cancelled(f"job {job_id} cancelled")

        def on_start(info: StartInfo) -> None:
            queue.update(job_id, trainable_params=info.trainable_params, total_params=info.total_params,
                         unreadable_images=info.unreadable_images)
            if info.resumed_from_epoch:
                self._message(job_id, f"resumed from epoch {info.resumed_from_epoch}")
            self._message(job_id, f"training on {info.runtime}: {info.trainable_params:,} of "
                                  f"{info.total_params:,} parameters trainable, classes {info.classes}"
                                  + (f", {info.unreadable_images} unreadable images skipped"
                                     if info.unreadable_images else ""))

        def on_batch(progress: BatchProgress) -> None:
            data = progress.as_dict()
            self._emit(job_id, "progress", data)
            queue.update(job_id, progress=data)

        def on_epoch(report: EpochReport) -> None:
            self.metrics.epoch_seconds.observe(report.seconds)
            self._emit(job_id, "epoch", {
                "epoch": report.epoch, "train": split_metrics("train", report.train),
                "val": split_metrics("val", report.val), "learning_rate": report.learning_rate,
                "seconds": report.seconds,
            })

        def on_checkpoint(epoch: int) -> None:
            queue.update(job_id, checkpoint_epoch=epoch)

        return FitHooks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch, on_checkpoint=on_checkpoint,
                        check=check, progress_interval=self.progress_interval)

    def _train_and_publish(self, claim: Claim, record: JobRecord, heartbeat: _Heartbeat) -> dict[str, Any]:
        common = self.settings.common
        if record.spec is None:
            raise InvalidArgument("the job has no spec (a sweep parent is never run itself)")
        config = parse_job_spec(record.spec, common.data_roots)
        # Again here: the dataset may have changed since submit (the per-file facts are cached otherwise).
        root = Path(config.dataset_path)
        check = check_dataset(root, seed=config.recipe.seed, val_fraction=config.recipe.val_fraction,
                              cache_dir=Path(common.cache_dir))
        self._record_check(record, check.report)
        check.raise_for_errors()
        options = FitOptions(job_id=record.job_id, checkpoint_root=Path(self.settings.checkpoint_dir),
                             cache_dir=Path(common.cache_dir), device=self.device,
                             test_duplicates=frozenset(str(root / p) for p in check.test_duplicates))
        run = fit_distributed if config.recipe.devices > 1 else fit  # devices > 1: data-parallel ranks
        result = run(config, options, self._hooks(record.job_id, heartbeat))
        result.extra["dataset_check"] = check.report
        if heartbeat.lost.is_set() or not self.queue.heartbeat(claim, self.name):  # still ours?
            raise LeaseLost(record.job_id)
        gate = evaluate_gate(config.gate, result.metrics["val@op"], result.operating_point)
        point = result.operating_point
        self._message(record.job_id, f"operating point ({point.get('goal')}): threshold {point.get('threshold', 0.5):.4f}, "
                                     f"validation recall {point.get('recall', 0.0):.3f}, specificity "
                                     f"{point.get('specificity', 0.0):.3f}")
        outcome = {
            "metrics": [split_metrics(split, m) for split, m in result.metrics.items()],
            "epochs_run": result.epochs_run,
            "seconds": result.seconds,
            "cosine_to_initial": result.cosine_to_initial,
            "operating_point": {k: v for k, v in point.items() if k != "curve"},
            "preset": config.recipe.preset,
        }
        if not gate.passed and gate.on_fail == "fail":
            reason = f"quality gate failed: {gate.reason}; nothing was published and no alias moved"
            self._message(record.job_id, reason)
            raise GateRejected(reason, {**outcome, "gate": gate.as_dict()})
        manifest, fresh = publish(self.registry, self.client, self.prefix, config, result, record.job_id, gate)
        self._message(record.job_id, f"{'published' if fresh else 'already published as'} "
                                     f"{manifest.name} v{manifest.version}"
                                     + ("" if gate.passed else f" without aliases: quality gate failed: {gate.reason}")
                                     + (f" ({gate.reason})" if gate.passed and gate.reason else ""))
        return {"model": {"name": manifest.name, "version": manifest.version}, **outcome, "gate": gate.as_dict()}

    def _record_check(self, record: JobRecord, report: dict[str, Any]) -> None:
        """Store the full check with the job; its findings the submit-time pass had not made become events."""
        self.queue.update(record.job_id, dataset_report=report)
        known = set(record.dataset_report.get("warnings", []))
        for text in [*report["warnings"], *report["errors"]]:
            if text not in known:
                self._message(record.job_id, f"dataset check: {text}")

    # -- endings --------------------------------------------------------------------------------
    def _finish(self, claim: Claim, record: JobRecord, state: str, *, error: str = "",
                result: dict[str, Any] | None = None) -> None:
        fields: dict[str, Any] = {"state": state, "finished_at": time.time(), "error": error}
        if result is not None:
            fields["result"] = result
        record = self.queue.update(record.job_id, **fields)
        self._emit(record.job_id, "finished", {"job": record.model_dump()}, state)
        self.queue.release(claim, self.name)
        checkpoints.remove(self.settings.checkpoint_dir, record.job_id)
        self.metrics.finished.labels(state).inc()
        log.info("job %s %s%s", record.job_id, state, f": {error}" if error else "")
        self._close_sweep(record)

    def _fail(self, claim: Claim, record: JobRecord, reason: str) -> None:
        self.queue.dead_letter(record.job_id, reason)
        self._finish(claim, record, FAILED, error=reason)

    def _retry_or_fail(self, claim: Claim, record: JobRecord, reason: str) -> str:
        if record.attempt >= record.max_attempts:
            self._fail(claim, record, f"failed after {record.attempt} attempt(s): {reason}")
            return FAILED
        delay = self.settings.retry_backoff_seconds * 2 ** (record.attempt - 1)
        self.queue.update(record.job_id, state=RETRYING, error=reason, worker="")
        self._message(record.job_id, f"attempt {record.attempt} failed ({reason}); retrying in {delay:.1f}s",
                      RETRYING)
        self.queue.retry_later(claim, self.name, delay)
        self.metrics.retried.inc()
        return "retry"

    def _hand_back(self, claim: Claim, record: JobRecord, reason: str) -> None:
        """Requeue now for another worker; the interrupted attempt does not count."""
        epoch = checkpoints.latest_epoch(self.settings.checkpoint_dir, record.job_id)
        self.queue.update(record.job_id, state=QUEUED, attempt=max(0, record.attempt - 1), worker="")
        self._message(record.job_id, f"{reason}: job handed back, it resumes from epoch {epoch}", QUEUED)
        self.queue.retry_later(claim, self.name, 0.0)
        self.metrics.handed_back.inc()

    def _close_sweep(self, record: JobRecord) -> None:
        try:
            on_child_finished(self.queue, self.registry, record)
        except Exception:  # noqa: BLE001 - the child's own outcome stands; the next child retries closing
            log.exception("closing the sweep of job %s failed", record.job_id)


# -- standalone process ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.worker",
                                     description="Run one trainer worker (scale-out).")
    parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--name", default="", help="consumer name (default: host-pid-random)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    args = parser.parse_args(argv)
    settings = TrainerSettings()
    setup_logging("trainer-worker", settings.common.log_level, settings.common.log_format)
    tracing.setup_tracing("trainer-worker")
    url = settings.common.redis_url_with_password(require_url(settings.common.redis_url))
    client = connect(url)
    telemetry = ServiceTelemetry("trainer-worker")  # /metrics on ZDM_TRAINER_METRICS_PORT (one per process)
    metrics = TrainerMetrics(telemetry.registry, JobQueue(client, settings.common.key_prefix))
    telemetry.serve(settings.host, settings.metrics_port)
    worker = Worker(settings, client, name=args.name, device=args.device, metrics=metrics)
    stop_on_signals(worker.request_stop, second_exits=True)  # the current batch finishes first
    worker.run(burst=args.burst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
