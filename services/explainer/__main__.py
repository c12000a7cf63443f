"""`python -m services.explainer`: the Explainer gRPC service."""

from __future__ import annotations

import logging

from common.grpc_server import ServiceBinding, build_server, stop_on_signals
from common.images import silence_opencv_logs
from common.log import setup_logging
from common.registry import Registry
from common.settings import ExplainerSettings
from common.telemetry import ServiceTelemetry
from common.tracing import setup_tracing
from protos.zdm.v1 import explainer_pb2_grpc
from services.explainer.metrics import ExplainerMetrics
from services.explainer.model_store import ExplainerModelStore
from services.explainer.servicer import ExplainerServicer

log = logging.getLogger("services.explainer")


def build(settings: ExplainerSettings, telemetry: ServiceTelemetry | None = None):
    """The started server (health SERVING: models load on demand) and its servicer.

    ``telemetry``: metrics registry and tracing (default: a new one); /metrics is served on
    ``settings.metrics_port`` when that is > 0 (``telemetry.close()`` stops it).
    """
    telemetry = telemetry or ServiceTelemetry("explainer")
    store = ExplainerModelStore(Registry(settings.common.registry), settings.default_model, settings.default_alias)
    servicer = ExplainerServicer(settings, store, metrics=ExplainerMetrics(telemetry.registry))
    server = build_server(settings.host, settings.port,
                          [ServiceBinding(servicer, explainer_pb2_grpc.add_ExplainerServicer_to_server,
                                          "zdm.v1.Explainer")],
                          max_workers=settings.max_workers, max_message_bytes=settings.max_message_bytes,
                          grace_seconds=settings.grace_seconds, interceptors=telemetry.interceptors)
    telemetry.serve(settings.host, settings.metrics_port)
    server.set_serving(True)
    return server, servicer


def main() -> None:
    settings = ExplainerSettings()
    setup_logging("explainer", settings.common.log_level, settings.common.log_format)
    setup_tracing("explainer")
    silence_opencv_logs()
    server, _ = build(settings)
    log.info("explainer listening on %s:%d (registry %s)", settings.host, server.port, settings.common.registry)
    stop_on_signals(server.stop)
    server.wait()


if __name__ == "__main__":
    main()
