"""gRPC server builder: error interceptor, health (NOT_SERVING until ready), reflection, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.auth import AuthInterceptor, TokenFile, exposure_check, log_policy
from common.errors import ZdmError
from common.log import request_id
from common.ratelimit import RateLimiter
from common.settings import SecuritySettings
from common.streams import KEEPALIVE_OPTIONS, StreamLimitInterceptor
from common.tls import server_credentials
from common.wrapping_interceptor import WrappingInterceptor

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer, the generated add_XServicer_to_server function and the full service name."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    name: str  # e.g. "zdm.v1.Classifier"


def _request_id_from(context: grpc.ServicerContext) -> str:
    """The caller's request id (or a new one), sent back in the trailing metadata of every call, failed or not."""
    rid = next((str(v) for k, v in context.invocation_metadata() or () if k == REQUEST_ID_HEADER and v), "")
    rid = rid or uuid.uuid4().hex[:12]
    context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
    return rid


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str, rid: str) -> None:
    if isinstance(exc, ZdmError):
        log.info("%s -> %s: %s", method, exc.code.name, exc.message)
        context.abort(exc.code, exc.message)
    if context.code() is not None:  # the handler already aborted the call itself
        raise exc
    log.exception("%s failed (request %s)", method, rid)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (request id {rid})")


def _wrap_unary(behavior: Callable, method: str) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        rid = _request_id_from(context)
        token = request_id.set(rid)
        try:
            return behavior(request_or_iterator, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            _abort(context, exc, method, rid)
        finally:
            request_id.reset(token)

    return handler


def _wrap_stream(behavior: Callable, method: str) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        rid = _request_id_from(context)
        token = request_id.set(rid)
        try:
            yield from behavior(request_or_iterator, context)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc, method, rid)
        finally:
            try:
                request_id.reset(token)
            except ValueError:  # generator resumed in another context
                pass

    return handler


class ErrorInterceptor(WrappingInterceptor):
    """Maps domain errors to their status codes (unary and streaming); anything else is INTERNAL."""

    def _wrap(self, handler: Any, method: str) -> Any:
        return _wrap_handler(handler, method)


def _wrap_handler(handler: Any, method: str) -> Any:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, method), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, method), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(handler.stream_unary, method), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream(handler.stream_stream, method), handler.request_deserializer, handler.response_serializer
    )


class RunningServer:
    """A started server with its bound port and health state."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer,
                 names: list[str], grace_seconds: float, health_server: grpc.Server | None = None,
                 health_port: int = 0) -> None:
        self.server = server
        self.port = port
        self.health_server = health_server
        self.health_port = health_port
        self.health = health_servicer
        self.names = names
        self.grace_seconds = grace_seconds
        self._stopped = threading.Event()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.names]:
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (load balancers drain), then stop with grace."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        self.server.stop(self.grace_seconds if grace is None else grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def build_server(host: str, port: int, bindings: list[ServiceBinding], *, max_workers: int = 16,
                 max_message_bytes: int = 64 * 1024 * 1024, grace_seconds: float = 10.0,
                 max_streams: int = 1024, security: SecuritySettings | None = None,
                 health_port: int | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = ()) -> RunningServer:
    """Build and start a server; port 0 binds a free port. Health starts NOT_SERVING.

    ``security`` (default: read from the environment) sets tokens, TLS and rate limits (docs/security.md);
    ``max_workers`` threads stay for unary calls whatever ``max_streams`` streams hold (common/streams.py).
    ``health_port`` (None = off, 0 = a free port) serves only the health service, in plain text on a pool of
    its own: for probes that speak neither TLS nor tokens (the kubelet's gRPC probe).
    ``interceptors`` (telemetry: tracing, metrics) run outside the others, so they see final statuses.
    """
    security = security if security is not None else SecuritySettings()
    exposure_check(host, security.auth_tokens_file, security.allow_insecure)
    tokens = TokenFile(security.auth_tokens_file) if security.auth_tokens_file is not None else None
    limiter = RateLimiter(security.rate_limits) if tokens is not None else None  # per token: none without tokens
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        *KEEPALIVE_OPTIONS,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers + max_streams, thread_name_prefix="grpc"),
        interceptors=[*interceptors, AuthInterceptor(tokens, limiter), StreamLimitInterceptor(max_streams),
                      ErrorInterceptor()],
        options=options,
    )
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.name for b in bindings]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    if security.tls:
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(security))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    health_server, health_bound = (None, 0) if health_port is None else _health_only(host, health_port, health_servicer)
    log_policy(names, tokens)
    if security.tls:
        log.info("TLS on %s:%d%s", host, bound, " (client certificates required)" if security.tls_ca else "")
    running = RunningServer(server, bound, health_servicer, names, grace_seconds, health_server, health_bound)
    running.set_serving(False)
    return running


def _health_only(host: str, port: int, health_servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=6, thread_name_prefix="grpc-health"),
                         interceptors=[StreamLimitInterceptor(2)], options=[("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the health port {host}:{port}")
    server.start()
    return server, bound


def stop_on_signals(stop: Callable[[], None], *, second_exits: bool = False) -> None:
    """SIGTERM / SIGINT call stop() in a thread; with ``second_exits`` a second signal exits the process at once."""
    signals = 0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if second_exits and signals > 1:
            log.warning("second signal %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("signal %s: stopping", signal.Signals(signum).name)
        threading.Thread(target=stop, name="stopper", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
