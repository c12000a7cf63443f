"""Typed Python SDK for the three services: what schedulers, factory systems and auditors use."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.zdm.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    explainer_pb2,
    explainer_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TERMINAL_STATES = {
    trainer_pb2.JOB_STATE_SUCCEEDED,
    trainer_pb2.JOB_STATE_FAILED,
    trainer_pb2.JOB_STATE_CANCELLED,
}


@dataclass(frozen=True)
class Endpoints:
    trainer: str = "127.0.0.1:50051"
    classifier: str = "127.0.0.1:50052"
    explainer: str = "127.0.0.1:50053"

    @classmethod
    def from_env(cls) -> Endpoints:
        return cls(
            trainer=os.environ.get("ZDM_TRAINER_ADDR", cls.trainer),
            classifier=os.environ.get("ZDM_CLASSIFIER_ADDR", cls.classifier),
            explainer=os.environ.get("ZDM_EXPLAINER_ADDR", cls.explainer),
        )


def model_ref(name: str = "", version: int = 0, alias: str = "") -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, version=version, alias=alias)


def parse_model_ref(text: str) -> common_pb2.ModelRef:
    """``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` as a ModelRef; empty = the service's default model.

    Raises:
        ValueError: a version that is not a positive integer, or an empty name before ``:`` / ``@``.
    """
    text = text.strip()
    if not text:
        return common_pb2.ModelRef()
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias:
            raise ValueError(f"model {text!r}: expected NAME@ALIAS")
        return common_pb2.ModelRef(name=name, alias=alias)
    name, sep, version = text.partition(":")
    if not name or (sep and not (version.isdigit() and int(version) > 0)):
        raise ValueError(f"model {text!r}: expected NAME or NAME:VERSION (a version >= 1)")
    return common_pb2.ModelRef(name=name, version=int(version) if sep else 0)


def image_from(source: str | Path | bytes, name: str = "") -> common_pb2.Image:
    if isinstance(source, bytes):
        return common_pb2.Image(data=source, name=name)
    path = Path(source)
    return common_pb2.Image(data=path.read_bytes(), name=name or path.name)


@dataclass(frozen=True)
class Credentials:
    """How to reach secured services (docs/security.md): a bearer token and / or TLS files (PEM).

    ``tls_ca`` verifies the server (TLS on); ``tls_cert`` + ``tls_key`` are this client's certificate for
    mutual TLS. With neither, the channel is plain text (fine on loopback).
    """

    token: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_env(cls) -> Credentials:
        """``ZDM_TOKEN``, ``ZDM_TLS_CA``, ``ZDM_TLS_CERT``, ``ZDM_TLS_KEY`` (empty or unset = not used)."""
        def path(name: str) -> Path | None:
            value = os.environ.get(name, "")
            return Path(value) if value else None

        return cls(token=os.environ.get("ZDM_TOKEN", ""), tls_ca=path("ZDM_TLS_CA"),
                   tls_cert=path("ZDM_TLS_CERT"), tls_key=path("ZDM_TLS_KEY"))

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


REQUEST_ID_HEADER = "x-request-id"


def request_id_of(call: grpc.Call | grpc.RpcError) -> str:
    """The request id a service returned in the trailing metadata (of a ``with_call`` result or an error)."""
    for key, value in call.trailing_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return str(value)
    return ""


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (also on plain-text channels, unlike call credentials)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def channel(address: str, credentials: Credentials | None = None) -> grpc.Channel:
    """A channel to one service: TLS when ``credentials`` name a CA or a client certificate, the bearer
    token on every call; ``credentials`` default to the environment (``Credentials.from_env``)."""
    creds = credentials if credentials is not None else Credentials.from_env()
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if creds.tls:
        tls = grpc.ssl_channel_credentials(
            root_certificates=creds.tls_ca.read_bytes() if creds.tls_ca else None,
            private_key=creds.tls_key.read_bytes() if creds.tls_key else None,
            certificate_chain=creds.tls_cert.read_bytes() if creds.tls_cert else None,
        )
        base = grpc.secure_channel(address, tls, options=options)
    else:
        base = grpc.insecure_channel(address, options=options)
    from common.tracing import traced_channel  # client spans + context propagation when tracing is configured

    base = traced_channel(base)
    return grpc.intercept_channel(base, _BearerToken(creds.token)) if creds.token else base



def wait_serving(address: str, service: str = "", timeout: float = 60.0, *, any_status: bool = False,
                 credentials: Credentials | None = None) -> None:
    """Block until the server at address reports SERVING for service (raises TimeoutError).

    With any_status, any health answer will do (the process is up, maybe waiting for a model).
    """
    import time

    deadline = time.monotonic() + timeout
    last = "no answer"
    with channel(address, credentials) as conn:
        stub = health_pb2_grpc.HealthStub(conn)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if any_status or status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.2)
    raise TimeoutError(f"{address} {service or 'server'} not SERVING after {timeout:.0f}s (last: {last})")


class TrainerClient:
    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self.channel = channel(address, credentials)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    def submit(self, spec: trainer_pb2.JobSpec, *, idempotency_key: str = "",
               max_attempts: int = 0) -> trainer_pb2.SubmitJobResponse:
        return self.stub.SubmitJob(trainer_pb2.SubmitJobRequest(
            job=spec, idempotency_key=idempotency_key, max_attempts=max_attempts))

    def submit_sweep(self, sweep: trainer_pb2.SweepSpec, *, idempotency_key: str = "") -> trainer_pb2.SubmitJobResponse:
        return self.stub.SubmitJob(trainer_pb2.SubmitJobRequest(sweep=sweep, idempotency_key=idempotency_key))

    def get(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id))

    def watch(self, job_id: str, after_sequence: int = 0) -> Iterator[trainer_pb2.JobEvent]:
        return self.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence))

    def cancel(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id))

    def list(self, limit: int = 50) -> list[trainer_pb2.Job]:
        return list(self.stub.ListJobs(trainer_pb2.ListJobsRequest(limit=limit)).jobs)

    def models(self, name: str = "") -> list[common_pb2.ModelInfo]:
        return list(self.stub.ListModels(trainer_pb2.ListModelsRequest(name=name)).models)

    def get_model(self, ref: common_pb2.ModelRef) -> common_pb2.ModelInfo:
        return self.stub.GetModel(trainer_pb2.GetModelRequest(model=ref))

    def set_alias(self, name: str, alias: str, version: int) -> common_pb2.ModelInfo:
        return self.stub.SetAlias(trainer_pb2.SetAliasRequest(name=name, alias=alias, version=version))

    def check_dataset(self, dataset_path: str | Path, *, seed: int = 0,
                      val_fraction: float | None = None) -> trainer_pb2.DatasetReport:
        """The dataset check a job gets at submit time, without training (the path as the trainer sees it)."""
        request = trainer_pb2.CheckDatasetRequest(dataset_path=str(dataset_path), seed=seed)
        if val_fraction is not None:
            request.val_fraction = val_fraction
        return self.stub.CheckDataset(request)

    def compare_models(self, a: common_pb2.ModelRef, b: common_pb2.ModelRef) -> trainer_pb2.CompareModelsResponse:
        return self.stub.CompareModels(trainer_pb2.CompareModelsRequest(a=a, b=b))

    def close(self) -> None:
        self.channel.close()


class ClassifierClient:
    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self.channel = channel(address, credentials)
        self.stub = classifier_pb2_grpc.ClassifierStub(self.channel)

    def classify(self, image: common_pb2.Image, *, model: common_pb2.ModelRef | None = None,
                 part_id: str = "", line_id: str = "", timeout: float | None = None) -> classifier_pb2.Verdict:
        return self.stub.Classify(classifier_pb2.ClassifyRequest(
            image=image, model=model, part_id=part_id, line_id=line_id), timeout=timeout)

    def classify_batch(self, images: list[common_pb2.Image], *,
                       model: common_pb2.ModelRef | None = None) -> list[classifier_pb2.Verdict]:
        return list(self.stub.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(images=images, model=model)).verdicts)

    def classify_stream(self, requests: Iterable[classifier_pb2.ClassifyRequest]) -> Iterator[classifier_pb2.Verdict]:
        return self.stub.ClassifyStream(iter(requests))

    def model_info(self, model: common_pb2.ModelRef | None = None) -> classifier_pb2.ServedModel:
        return self.stub.GetModelInfo(classifier_pb2.GetModelInfoRequest(model=model))

    def set_threshold(self, name: str, threshold: float) -> classifier_pb2.ServedModel:
        return self.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name=name, threshold=threshold))

    def query_audit(self, part_id: str = "", limit: int = 0) -> list[classifier_pb2.AuditRecord]:
        return list(self.stub.QueryAudit(classifier_pb2.AuditQuery(part_id=part_id, limit=limit)).records)

    def close(self) -> None:
        self.channel.close()


class ExplainerClient:
    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self.channel = channel(address, credentials)
        self.stub = explainer_pb2_grpc.ExplainerStub(self.channel)

    def explain(self, request: explainer_pb2.ExplainRequest,
                timeout: float | None = None) -> explainer_pb2.ExplainResponse:
        return self.stub.Explain(request, timeout=timeout)

    def evaluate(self, request: explainer_pb2.EvaluateDatasetRequest) -> Iterator[explainer_pb2.EvaluateDatasetEvent]:
        return self.stub.EvaluateDataset(request)

    def search_defaults(
        self, request: explainer_pb2.SearchDefaultsRequest
    ) -> Iterator[explainer_pb2.SearchDefaultsEvent]:
        return self.stub.SearchDefaults(request)

    def close(self) -> None:
        self.channel.close()


def to_dict(message: object) -> dict:
    """A proto message as a plain dict (snake_case names, zero values included), for printing and JSON output."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,  # type: ignore[arg-type]
                                     always_print_fields_with_no_presence=True)
