"""Telemetry of the three services over real channels: /metrics over HTTP, request ids, one trace submit -> worker."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from client.sdk import request_id_of
from client.stack import free_port
from common import tracing
from common.datasets.synthetic import generate_dataset
from common.grpc_server import ServiceBinding, build_server
from common.jobqueue import JobQueue
from common.prometheus import MetricsEndpoint
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from common.telemetry import ServiceTelemetry
from protos.zdm.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    explainer_pb2,
    explainer_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from services.explainer.__main__ import build as build_explainer
from services.trainer.metrics import TrainerMetrics
from services.trainer.servicer import TrainerServicer
from services.trainer.worker import Worker
from tests.service.classifier_support import Running, publish, random_state, settings_for
from tests.service.trainer_support import job_spec, make_dataset, make_settings, one_torch_thread


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics like curl does and parse it: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    """The sample whose labels include ``labels`` (None when there is none)."""
    for (sample, sample_labels), v in samples.items():
        if sample == name and set(labels.items()) <= set(sample_labels):
            return v
    return None


def assert_default_collectors(samples: dict) -> None:
    assert value(samples, "process_cpu_seconds_total") is not None
    assert value(samples, "python_info") == 1.0
    assert value(samples, "python_gc_collections_total") is not None


def assert_bound_to_loopback(endpoint: MetricsEndpoint | None) -> None:
    """/metrics listens on the service's host (loopback here), not on every interface."""
    assert endpoint is not None
    assert endpoint.server.socket.getsockname()[0] == "127.0.0.1"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_trainer_metrics_request_ids_and_one_trace_from_submit_to_worker(tmp_path, redis_url, redis_client,
                                                                          key_prefix, registry_root, spans) -> None:
    provider, exporter = spans
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    dataset = make_dataset(settings, train_per_class=6, test_per_class=2)
    queue = JobQueue(redis_client, key_prefix, lease_seconds=settings.lease_seconds)
    telemetry = ServiceTelemetry("trainer", tracer_provider=provider)
    metrics = TrainerMetrics(telemetry.registry, queue)
    registry = Registry(registry_root)
    server = build_server("127.0.0.1", 0, [ServiceBinding(TrainerServicer(settings, queue, registry, metrics=metrics),
                                                          trainer_pb2_grpc.add_TrainerServicer_to_server,
                                                          "zdm.v1.Trainer")],
                          grace_seconds=1.0, interceptors=telemetry.interceptors)
    endpoint = telemetry.serve("127.0.0.1", free_port())
    channel = tracing.traced_channel(grpc.insecure_channel(f"127.0.0.1:{server.port}"), provider)
    stub = trainer_pb2_grpc.TrainerStub(channel)
    try:
        reply, call = stub.SubmitJob.with_call(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, epochs=1)),
                                               metadata=(("x-request-id", "req-42"),))
        assert request_id_of(call) == "req-42"  # success returns it too
        assert value(scrape(endpoint.url), "zdm_trainer_queue_depth") == 1.0
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetJob(trainer_pb2.GetJobRequest(job_id="0" * 16))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(request_id_of(failed.value)) == 12  # a generated one

        with one_torch_thread():
            worker = Worker(settings, redis_client, registry=registry, progress_interval=0.0, metrics=metrics,
                            tracer_provider=provider)
            assert worker.run(burst=True, poll_ms=100) == 1
        assert stub.GetJob(trainer_pb2.GetJobRequest(job_id=reply.job_id)).state == trainer_pb2.JOB_STATE_SUCCEEDED

        samples = scrape(endpoint.url)
        assert_default_collectors(samples)
        assert value(samples, "grpc_server_started_total", grpc_method="SubmitJob", grpc_type="unary",
                     grpc_service="zdm.v1.Trainer") == 1.0
        assert value(samples, "grpc_server_handled_total", grpc_method="SubmitJob", grpc_code="OK") == 1.0
        assert value(samples, "grpc_server_handled_total", grpc_method="GetJob", grpc_code="NOT_FOUND") == 1.0
        assert value(samples, "grpc_server_handling_seconds_count", grpc_method="SubmitJob") == 1.0
        assert value(samples, "zdm_trainer_jobs_submitted_total", kind="job") == 1.0
        assert value(samples, "zdm_trainer_jobs_finished_total", state="SUCCEEDED") == 1.0
        assert value(samples, "zdm_trainer_jobs_running") == 0.0
        assert value(samples, "zdm_trainer_queue_depth") == 0.0
        assert value(samples, "zdm_trainer_epoch_seconds_count") == 1.0
        assert value(samples, "zdm_trainer_attempt_seconds_count", outcome="SUCCEEDED") == 1.0
        assert_bound_to_loopback(endpoint)
    finally:
        channel.close()
        server.stop(0)
        telemetry.close()

    finished = exporter.get_finished_spans()
    submit_client = next(s for s in finished if s.name == "/zdm.v1.Trainer/SubmitJob" and s.kind.name == "CLIENT")
    submit_server = next(s for s in finished if s.name == "/zdm.v1.Trainer/SubmitJob" and s.kind.name == "SERVER")
    job = next(s for s in finished if s.name == "zdm.trainer.job")
    trace_id = submit_client.context.trace_id
    assert submit_server.context.trace_id == trace_id and job.context.trace_id == trace_id
    assert submit_server.parent.span_id == submit_client.context.span_id
    assert job.parent.span_id == submit_server.context.span_id  # the worker continues the submit call's trace
    assert job.attributes["zdm.job_id"] == reply.job_id and job.attributes["zdm.attempt"] == 1


def test_explainer_metrics_latency_by_method(tmp_path, registry_root) -> None:
    data = generate_dataset(tmp_path / "syn", train_per_class=1, test_per_class=2, size=64, seed=3)
    settings = ExplainerSettings(port=0, metrics_port=free_port(), common=CommonSettings(registry=registry_root))
    telemetry = ServiceTelemetry("explainer")
    server, _ = build_explainer(settings, telemetry)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        publish(Registry(registry_root), "m", random_state(0))
        image = sorted((data / "test" / "def_front").glob("*.png"))[0].read_bytes()
        stub = explainer_pb2_grpc.ExplainerStub(channel)
        _, call = stub.Explain.with_call(explainer_pb2.ExplainRequest(
            image=common_pb2.Image(data=image), method=explainer_pb2.METHOD_EIGENCAM))
        assert dict(call.trailing_metadata())["x-request-id"]
        samples = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert_default_collectors(samples)
        assert value(samples, "zdm_explainer_explain_seconds_count", method="eigencam") == 1.0
        assert value(samples, "grpc_server_handled_total", grpc_service="zdm.v1.Explainer", grpc_method="Explain",
                     grpc_code="OK") == 1.0
        assert value(samples, "zdm_explainer_evaluations_total") is None  # none run yet
        assert_bound_to_loopback(telemetry.endpoint)
    finally:
        channel.close()
        server.stop(0)
        telemetry.close()


def test_classifier_metrics_keep_default_collectors_and_grpc_series(tmp_path, redis_url, key_prefix) -> None:
    settings = settings_for(tmp_path, redis_url, key_prefix, metrics_port=free_port())
    running = Running(settings, redis_url, wait=False)
    try:
        stub = classifier_pb2_grpc.ClassifierStub(running.channel)
        with pytest.raises(grpc.RpcError) as failed:  # no model published: UNAVAILABLE
            stub.GetModelInfo(classifier_pb2.GetModelInfoRequest())
        assert dict(failed.value.trailing_metadata())["x-request-id"]
        samples = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert_default_collectors(samples)
        code = failed.value.code().name
        assert value(samples, "grpc_server_handled_total", grpc_service="zdm.v1.Classifier",
                     grpc_method="GetModelInfo", grpc_code=code) == 1.0
        assert value(samples, "zdm_classifier_audit_buffer") is not None  # the classifier's own series
        assert_bound_to_loopback(running.app.telemetry.endpoint)
    finally:
        running.close()


def test_health_checks_are_not_traced_and_tracing_is_off_by_default(spans, monkeypatch) -> None:
    provider, exporter = spans
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.exporters_from_env() == []
    assert [type(e).__name__ for e in tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console"})] == \
        ["ConsoleSpanExporter"]
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x:1"}) == []
    telemetry = ServiceTelemetry("explainer", tracer_provider=provider)
    server = build_server("127.0.0.1", 0, [], interceptors=telemetry.interceptors)
    channel = tracing.traced_channel(grpc.insecure_channel(f"127.0.0.1:{server.port}"), provider)
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.RpcError) as missing:
            classifier_pb2_grpc.ClassifierStub(channel).GetModelInfo(classifier_pb2.GetModelInfoRequest())
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
        server.stop(0)
    names = {s.name for s in exporter.get_finished_spans()}
    assert "/grpc.health.v1.Health/Check" not in names
    assert "/zdm.v1.Classifier/GetModelInfo" in names  # the client span of an ordinary call
