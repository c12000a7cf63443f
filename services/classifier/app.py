"""Wires the classifier together: registry, model store, thresholds, audit, metrics, gRPC server
(zdm.v1.Classifier and, on the same port, the Open Inference Protocol's inference.GRPCInferenceService).

Used by ``python -m services.classifier``, the tests and the benchmark, so all three run the same
service.
"""

from __future__ import annotations

import logging

import redis

from common.grpc_server import RunningServer, ServiceBinding, build_server
from common.registry import Registry
from common.settings import ClassifierSettings
from common.telemetry import ServiceTelemetry
from protos.inference import open_inference_pb2_grpc
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc
from services.classifier import inference_protocol
from services.classifier.audit import AuditLog
from services.classifier.metrics import ClassifierMetrics
from services.classifier.model_store import BackendFactory, ModelStore
from services.classifier.servicer import ClassifierServicer
from services.classifier.thresholds import ThresholdStore

log = logging.getLogger(__name__)

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


class ClassifierApp:
    """The classifier service: ``start()`` serves (health NOT_SERVING until a model is loaded), ``stop()``.

    Args:
        settings: the service's settings.
        redis_client: thresholds, audit and publish announcements.
        factory: backend factory override (tests inject slow or counting backends).
    """

    def __init__(
        self, settings: ClassifierSettings, redis_client: redis.Redis, *, factory: BackendFactory | None = None
    ) -> None:
        self.settings = settings
        prefix = settings.common.key_prefix
        self.metrics = ClassifierMetrics()
        self.telemetry = ServiceTelemetry("classifier", self.metrics.registry)
        self.registry = Registry(settings.common.registry)
        self.thresholds = ThresholdStore(redis_client, prefix, settings.default_threshold, settings.threshold_cache_seconds)
        self.audit = AuditLog(
            redis_client,
            prefix,
            max_len=settings.audit_max_len,
            buffer_size=settings.audit_buffer_size,
            per_part_max=settings.audit_per_part_max,
            part_ttl_seconds=settings.audit_part_ttl_seconds,
            linger_ms=settings.audit_linger_ms,
            metrics=self.metrics,
        )
        self.store = ModelStore(
            self.registry,
            settings,
            factory=factory,
            metrics=self.metrics,
            redis_client=redis_client,
            on_ready=self._on_ready,
        )
        self.servicer = ClassifierServicer(settings, self.store, self.registry, self.thresholds, self.audit, self.metrics)
        self.inference_servicer = inference_protocol.InferenceProtocolServicer(
            settings, self.store, self.registry, self.servicer
        )
        self.server: RunningServer | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the classifier is not started")
        return self.server.port

    def start(self) -> int:
        """Bind and start the server, then load models in the background; returns the bound port."""
        s = self.settings
        bindings = [
            ServiceBinding(self.servicer, classifier_pb2_grpc.add_ClassifierServicer_to_server, SERVICE_NAME),
            ServiceBinding(
                self.inference_servicer,
                open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                inference_protocol.SERVICE_NAME,
            ),
        ]
        self.server = build_server(
            s.host,
            s.port,
            bindings,
            max_workers=s.max_workers,
            max_message_bytes=s.max_message_bytes,
            grace_seconds=s.grace_seconds,
            max_streams=s.max_streams,
            security=s.security,
            health_port=s.health_port or None,
            interceptors=self.telemetry.interceptors,
        )
        self.telemetry.serve(s.host, s.metrics_port)
        self.store.start()
        log.info("classifier listening on %s:%d", s.host, self.server.port)
        return self.server.port

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, finish in-flight calls (grace), unload models, write the audit buffer."""
        if self.server is not None:
            self.server.stop(grace)
        self.store.close()
        self.audit.close()
        self.telemetry.close()

    def _on_ready(self, ready: bool) -> None:
        if self.server is not None:
            self.server.set_serving(ready)
