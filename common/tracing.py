"""OpenTelemetry tracing: off unless an exporter is configured.

Configuration uses OpenTelemetry's own variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) exports over OTLP/gRPC, ``OTEL_TRACES_EXPORTER=console`` prints
spans to stderr (both may be given, ``OTEL_TRACES_EXPORTER=none`` turns tracing off), ``OTEL_SERVICE_NAME``
overrides the service name. gRPC calls are traced by the OpenTelemetry gRPC instrumentation (server
interceptor, client channel interceptor); a training job carries its submitter's W3C trace context in
its Redis record, so the worker's span joins the trace of the SubmitJob call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)

_configured: TracerProvider | None = None


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the environment asks for (none: tracing stays off)."""
    env = os.environ if environ is None else environ
    names = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()}
    if "none" in names:
        return []
    exporters: list[SpanExporter] = []
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "otlp" in names:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())  # reads the endpoint, headers and TLS settings from the environment
    return exporters


def setup_tracing(service: str) -> TracerProvider | None:
    """Install the process-wide tracer provider once when an exporter is configured; None = tracing off."""
    global _configured
    if _configured is not None:
        return _configured
    exporters = exporters_from_env()
    if not exporters:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        f"zdm-{service}")}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = provider
    log.info("tracing on: %s", ", ".join(type(e).__name__ for e in exporters))
    return provider


def configured_provider() -> TracerProvider | None:
    return _configured


def _traced_calls():
    """Every call except health checks and reflection (probes every few seconds would drown the traces)."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection.")))


def server_interceptors(provider: TracerProvider | None) -> list[grpc.ServerInterceptor]:
    """The OpenTelemetry server interceptor for ``provider``; none when tracing is off."""
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=provider, filter_=_traced_calls())]


def traced_channel(channel: grpc.Channel, provider: TracerProvider | None = None) -> grpc.Channel:
    """``channel`` with a client span per call (and the trace context sent along), when tracing is on."""
    provider = provider or _configured
    if provider is None:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel  # its own interceptor protocol

    return intercept_channel(channel, client_interceptor(tracer_provider=provider, filter_=_traced_calls()))


def current_context() -> dict[str, str]:
    """The active span's W3C trace context (``traceparent``, ``tracestate``) as a dict; empty without a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def job_span(name: str, carrier: Mapping[str, str], provider: TracerProvider | None = None,
             **attributes: Any) -> Iterator[trace.Span]:
    """A consumer span continuing the trace in ``carrier`` (a job's stored context); no-op when tracing is off."""
    tracer = trace.get_tracer("zdm.jobs", tracer_provider=provider)
    parent = propagate.extract(dict(carrier))
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER,
                                      attributes={k: v for k, v in attributes.items() if v is not None}) as span:
        yield span
