"""Prometheus plumbing shared by the services: a registry with the standard collectors, and /metrics over HTTP.

Each service builds its own registry (tests run several services in one process), so the process /
platform / GC collectors that prometheus_client registers on its global registry are added here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A registry holding the default ``process_*`` and ``python_*`` collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server."""

    server: WSGIServer
    thread: Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve ``registry`` on ``http://host:port/metrics`` in a daemon thread; port 0 picks a free port.

    ``host`` is the service's own gRPC host, so a service bound to loopback does not publish its
    metrics on every interface.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    endpoint = MetricsEndpoint(server, thread, host, server.server_port)
    log.info("metrics on %s", endpoint.url)
    return endpoint
