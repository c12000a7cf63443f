"""``python -m services.trainer``: the Trainer gRPC server plus ``settings.workers`` worker threads.

Health turns SERVING once Redis answers. On SIGTERM / SIGINT: health NOT_SERVING, the workers
stop after their current batch and hand running jobs back (they resume elsewhere from the last
epoch checkpoint), then the server stops with its grace period. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading

from common.grpc_server import ServiceBinding, build_server, stop_on_signals
from common.jobqueue import JobQueue
from common.log import setup_logging
from common.redis_conn import connect, masked_url, require_url
from common.registry import Registry
from common.settings import TrainerSettings
from common.telemetry import ServiceTelemetry
from common.tracing import setup_tracing
from protos.zdm.v1 import trainer_pb2_grpc
from services.trainer.metrics import TrainerMetrics
from services.trainer.servicer import TrainerServicer
from services.trainer.worker import Worker

log = logging.getLogger("services.trainer")

SERVICE_NAME = "zdm.v1.Trainer"


def main() -> int:
    settings = TrainerSettings()
    setup_logging("trainer", settings.common.log_level, settings.common.log_format)
    setup_tracing("trainer")
    url = settings.common.redis_url_with_password(require_url(settings.common.redis_url))
    client = connect(url)
    registry = Registry(settings.common.registry)
    queue = JobQueue(client, settings.common.key_prefix, lease_seconds=settings.lease_seconds,
                     history_ttl_seconds=settings.history_ttl_seconds)
    telemetry = ServiceTelemetry("trainer")
    metrics = TrainerMetrics(telemetry.registry, queue)
    servicer = TrainerServicer(settings, queue, registry, metrics=metrics)
    server = build_server(
        settings.host, settings.port,
        [ServiceBinding(servicer, trainer_pb2_grpc.add_TrainerServicer_to_server, SERVICE_NAME)],
        max_workers=settings.max_workers, max_message_bytes=settings.max_message_bytes,
        grace_seconds=settings.grace_seconds, max_streams=settings.max_streams, security=settings.security,
        health_port=settings.health_port or None, interceptors=telemetry.interceptors,
    )
    telemetry.serve(settings.host, settings.metrics_port)
    workers = [Worker(settings, client, registry=registry, metrics=metrics) for _ in range(settings.workers)]
    threads = [threading.Thread(target=w.run, name=f"worker-{i}", daemon=True) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    client.ping()
    server.set_serving(True)
    log.info("trainer serving on %s:%d with %d worker(s), redis %s", settings.host, server.port, len(workers),
             masked_url(url))

    def stop() -> None:
        server.set_serving(False)
        for worker in workers:
            worker.request_stop()
        for thread in threads:
            thread.join(timeout=settings.grace_seconds)
        server.stop()

    stop_on_signals(stop, second_exits=True)
    server.wait()
    log.info("trainer stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
