"""gRPC server metrics under the names Prometheus' gRPC exporters use (go-grpc-prometheus, py-grpc-prometheus).

``grpc_server_started_total``, ``grpc_server_handled_total{grpc_code}`` and ``grpc_server_handling_seconds``,
each labelled ``grpc_type``, ``grpc_service`` and ``grpc_method``, so existing Grafana dashboards work.
One interceptor measures every RPC of a server, streaming ones until their stream ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from common.wrapping_interceptor import WrappingInterceptor

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class GrpcServerMetrics:
    """The three gRPC server series in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("grpc_server_started_total", "RPCs started on the server", _LABELS, registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code",
                               (*_LABELS, "grpc_code"), registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its status",
                                 _LABELS, buckets=_BUCKETS, registry=registry)

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every call; placed outside the error interceptor, so it sees the final status."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        super().__init__()
        self.m = metrics

    def _wrap(self, handler: Any, method: str) -> Any:
        service, name = _split(method)
        if handler.unary_unary:
            kind, behavior, factory = "unary", handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream:
            kind, behavior, factory = "server_stream", handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary:
            kind, behavior, factory = "client_stream", handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            kind, behavior, factory = "bidi_stream", handler.stream_stream, grpc.stream_stream_rpc_method_handler
        labels = (kind, service, name)
        streaming = kind in ("server_stream", "bidi_stream")
        measured = self._stream(behavior, labels) if streaming else self._unary(behavior, labels)
        return factory(measured, handler.request_deserializer, handler.response_serializer)

    def _finish(self, labels: tuple[str, str, str], code: str, started: float) -> None:
        self.m.handled.labels(*labels, code).inc()
        self.m.seconds.labels(*labels).observe(time.perf_counter() - started)

    def _unary(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            self.m.started.labels(*labels).inc()
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._finish(labels, _code(context, failed), started)

        return handler

    def _stream(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self.m.started.labels(*labels).inc()
            started = time.perf_counter()
            outcome = "UNKNOWN"
            try:
                yield from behavior(request, context)
                outcome = _code(context, False)
            except GeneratorExit:  # the client went away mid-stream
                outcome = "CANCELLED"
                raise
            except BaseException:
                outcome = _code(context, True)
                raise
            finally:
                self._finish(labels, outcome, started)

        return handler
