"""A cap on streaming calls open at once, so idle streams cannot take the threads unary calls and health need.

The synchronous gRPC server runs each call on a pool thread for the call's whole life: an idle
ClassifyStream, WatchJob or Health.Watch holds one while it waits. The server's pool is therefore sized
``max_workers + max_streams`` (common/grpc_server.py) and this interceptor refuses the stream beyond
``max_streams`` with RESOURCE_EXHAUSTED, so at least ``max_workers`` threads always remain for unary calls.
Keepalive pings (KEEPALIVE_OPTIONS, set by the builder) end the streams of peers that went away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

# Ping idle connections so streams of vanished peers end; refuse clients pinging more than every 10 s.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
]


class StreamLimitInterceptor(grpc.ServerInterceptor):
    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        return self._open

    def _enter(self) -> bool:
        with self._lock:
            if self._open >= self.max_streams:
                return False
            self._open += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._open -= 1

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary:
            return handler
        method = handler_call_details.method
        refusal = f"{method.lstrip('/')}: {self.max_streams} streams already open on this server; retry later"
        des, ser = handler.request_deserializer, handler.response_serializer

        if handler.stream_unary:
            behavior = handler.stream_unary

            def client_stream(requests: Any, context: grpc.ServicerContext) -> Any:
                if not self._enter():
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                try:
                    return behavior(requests, context)
                finally:
                    self._leave()

            return grpc.stream_unary_rpc_method_handler(client_stream, des, ser)

        behavior = handler.unary_stream or handler.stream_stream

        def server_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not self._enter():
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            try:
                yield from behavior(request, context)
            finally:
                self._leave()

        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(server_stream, des, ser)
