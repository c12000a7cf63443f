"""Prometheus metrics of the trainer: the queue, jobs by outcome, job and epoch durations.

Jobs are counted by the worker loops of the process that exports them (``zdm_trainer_jobs_running``
is this process's share); the queue depth is read from Redis on each scrape, so every replica reports
the same queue.
"""

from __future__ import annotations

import logging
import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.jobqueue import JobQueue

log = logging.getLogger(__name__)

_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
_EPOCH_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class TrainerMetrics:
    """Every metric the trainer exports."""

    def __init__(self, registry: CollectorRegistry | None = None, queue: JobQueue | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("zdm_trainer_queue_depth", "Jobs waiting for a worker (incl. delayed retries)",
                                 registry=r)
        if queue is not None:
            self.queue_depth.set_function(lambda: _depth(queue))
        self.submitted = Counter("zdm_trainer_jobs_submitted_total", "Jobs accepted by SubmitJob", ["kind"], registry=r)
        self.running = Gauge("zdm_trainer_jobs_running", "Jobs this process's workers are running", registry=r)
        self.finished = Counter("zdm_trainer_jobs_finished_total", "Jobs ended, by final state", ["state"], registry=r)
        self.retried = Counter("zdm_trainer_jobs_retried_total", "Failed attempts scheduled for a retry", registry=r)
        self.handed_back = Counter("zdm_trainer_jobs_handed_back_total", "Running jobs handed back on shutdown",
                                   registry=r)
        self.attempt_seconds = Histogram("zdm_trainer_attempt_seconds", "Wall time of one attempt of a job, by outcome",
                                         ["outcome"], buckets=_JOB_BUCKETS, registry=r)
        self.epoch_seconds = Histogram("zdm_trainer_epoch_seconds", "Wall time of one training epoch (incl. validation)",
                                       buckets=_EPOCH_BUCKETS, registry=r)


def _depth(queue: JobQueue) -> float:
    try:
        return float(queue.waiting())
    except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis blinked
        log.debug("queue depth unavailable: %s", exc)
        return math.nan
