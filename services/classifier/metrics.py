"""Prometheus metrics of the classifier, in a registry of their own (so tests can build several).

The registry also holds the standard process / python collectors and the gRPC server series
(:mod:`common.telemetry`); the service exposes it on ``metrics_port`` when that is > 0.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.prometheus import new_registry

if TYPE_CHECKING:
    from services.classifier.verification import VerificationReport

log = logging.getLogger(__name__)

# Latency buckets in seconds: sub-millisecond resolution where a verdict usually lands.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class ClassifierMetrics:
    """Every metric the classifier exports. Methods are cheap enough for the verdict path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.requests = Counter(
            "zdm_classifier_requests_total", "Finished calls (stream items count singly)", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "zdm_classifier_request_seconds",
            "Server-side time of a call or stream item",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "zdm_classifier_stage_seconds", "Time per image in each stage", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "zdm_classifier_batch_size", "Images per inference batch", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("zdm_classifier_queue_depth", "Images waiting for a batch", ["model"], registry=r)
        self.dropped = Counter("zdm_classifier_dropped_total", "Items dropped before compute", ["reason"], registry=r)
        self.model_info = Gauge(
            "zdm_classifier_model_info", "1 for every loaded model version", ["name", "version", "backend"], registry=r
        )
        self.model_loads = Counter("zdm_classifier_model_loads_total", "Model loads by outcome", ["outcome"], registry=r)
        self.rejected_backends = Counter(
            "zdm_classifier_backend_rejections_total",
            "Backend candidates turned down while loading a model (failed verification or build)",
            ["backend", "reason"],
            registry=r,
        )
        self.audit_written = Counter("zdm_classifier_audit_written_total", "Audit records written", registry=r)
        self.audit_dropped = Counter("zdm_classifier_audit_dropped_total", "Audit records lost", ["reason"], registry=r)
        self.audit_buffer = Gauge("zdm_classifier_audit_buffer", "Audit records waiting to be written", registry=r)

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def model_loaded(self, name: str, version: int, backend: str) -> None:
        self.model_info.labels(name, str(version), backend).set(1)
        self.model_loads.labels("ok").inc()

    def backend_rejections(self, report: VerificationReport | None) -> None:
        """Count the candidates the build of a loaded model turned down (see services.classifier.verification)."""
        for outcome in report.rejected if report is not None else ():
            self.rejected_backends.labels(outcome.backend, outcome.reason).inc()

    def model_unloaded(self, name: str, version: int, backend: str) -> None:
        try:
            self.model_info.remove(name, str(version), backend)
        except KeyError:
            pass
