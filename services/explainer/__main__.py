"""`python -m services.explainer`: the Explainer gRPC service."""

from __future__ import annotations

import logging
import threading

from common.errors import ZdmError
from common.grpc_server import RunningServer, ServiceBinding, build_server, stop_on_signals
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

# How often the explainer looks for a first model while it has none (health NOT_SERVING meanwhile).
READY_POLL_SECONDS = 1.0


def build(settings: ExplainerSettings, telemetry: ServiceTelemetry | None = None):
    """The started server and its servicer. Health is NOT_SERVING until the default model (named, else
    the newest published) has loaded, as for the classifier; a background thread polls the registry
    for it. Other models still load on demand.

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
                          grace_seconds=settings.grace_seconds, max_streams=settings.max_streams,
                          security=settings.security, health_port=settings.health_port or None,
                          interceptors=telemetry.interceptors)
    telemetry.serve(settings.host, settings.metrics_port)
    threading.Thread(target=_serve_once_loaded, args=(store, server), name="explainer-ready", daemon=True).start()
    return server, servicer


def _serve_once_loaded(store: ExplainerModelStore, server: RunningServer) -> None:
    """Load the default model (polling until one is published), then report SERVING; ends with the server."""
    last_error = ""
    while True:
        try:
            loaded = store.get()
        except ZdmError as exc:  # nothing published yet (UNAVAILABLE) or the named model is missing
            message = exc.message
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint: logged, retried at the next poll
            message = f"{type(exc).__name__}: {exc}"
        else:
            log.info("explainer ready: model %s:%d loaded", loaded.manifest.name, loaded.manifest.version)
            server.set_serving(True)
            return
        if message != last_error:
            log.info("explainer not ready: %s", message)
            last_error = message
        if not server.server.wait_for_termination(timeout=READY_POLL_SECONDS):
            return  # the server stopped


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
