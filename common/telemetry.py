"""A service's telemetry in one object: Prometheus registry, gRPC server metrics, tracing interceptors, /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from common import tracing
from common.grpc_metrics import GrpcServerMetrics
from common.prometheus import MetricsEndpoint, new_registry, serve_metrics


class ServiceTelemetry:
    """Built once per service; ``interceptors`` go to ``build_server``, ``serve`` starts /metrics when asked.

    Args:
        service: "trainer" | "classifier" | "explainer" (the tracing service name).
        registry: where the service's own metrics live; default a new one with the standard collectors.
        tracer_provider: tracing for this server; default the process's configured provider (None = off).
    """

    def __init__(self, service: str, registry: CollectorRegistry | None = None, *,
                 tracer_provider: tracing.TracerProvider | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else new_registry()
        self.grpc = GrpcServerMetrics(self.registry)
        self.tracer_provider = tracer_provider or tracing.configured_provider()
        self.endpoint: MetricsEndpoint | None = None

    @property
    def interceptors(self) -> list:
        """Tracing first (its span covers the whole call), then the metrics interceptor."""
        return [*tracing.server_interceptors(self.tracer_provider), self.grpc.interceptor()]

    def serve(self, host: str, port: int) -> MetricsEndpoint | None:
        """/metrics on the service's host; port 0 = off (tests pass a free port)."""
        if port > 0:
            self.endpoint = serve_metrics(self.registry, host, port)
        return self.endpoint

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
