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

from common.errors import ZdmError
from common.log import request_id

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


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to their status codes (unary and streaming); anything else is INTERNAL.

    Wrapped handlers are built once per method and reused (the interceptor runs on every call).
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (original handler, wrapped)

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


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
                 names: list[str], grace_seconds: float) -> None:
        self.server = server
        self.port = port
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

    def wait(self) -> None:
        self.server.wait_for_termination()


def build_server(host: str, port: int, bindings: list[ServiceBinding], *, max_workers: int = 16,
                 max_message_bytes: int = 64 * 1024 * 1024, grace_seconds: float = 10.0,
                 interceptors: Sequence[grpc.ServerInterceptor] = ()) -> RunningServer:
    """Build and start a server; port 0 binds a free port. Health starts NOT_SERVING.

    ``interceptors`` (telemetry: tracing, metrics) run outside the error interceptor, so they see final statuses.
    """
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[*interceptors, ErrorInterceptor()],
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
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    running = RunningServer(server, bound, health_servicer, names, grace_seconds)
    running.set_serving(False)
    return running


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
