"""Trainer gRPC servicer: validate + enqueue, job status and events, the model registry.

The only place where proto messages and internal types meet: specs are stored as proto3-JSON
dicts (``MessageToDict(..., preserving_proto_field_name=True)``), job records and events are
turned back into protos here. Handlers raise domain errors; the server's interceptor maps them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from google.protobuf import json_format

from common import tracing
from common.errors import InvalidArgument
from common.jobqueue import QUEUED, TERMINAL, Event, JobQueue, JobRecord
from common.manifest import Manifest
from common.metrics import cosine_similarity
from common.models.zoo import build_model
from common.proto_convert import manifest_to_info
from common.registry import Registry
from common.settings import TrainerSettings
from protos.zdm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.trainer.dataset_check import check_dataset
from services.trainer.metrics import TrainerMetrics
from services.trainer.optim import validate_group_lr
from services.trainer.spec import DEFAULT_VAL_FRACTION, JobConfig, inspect_dataset, parse_job_spec
from services.trainer.sweep import expand_sweep

log = logging.getLogger(__name__)

MAX_ATTEMPTS_LIMIT = 100
MAX_LIST = 1000
MAX_IDEMPOTENCY_KEY = 200
WATCH_BLOCK_MS = 500


# -- internal -> proto ---------------------------------------------------------------------------

def _state(name: str) -> int:
    return trainer_pb2.JobState.Value(f"JOB_STATE_{name}")


def _parse(data: dict[str, Any], message: Any) -> Any:
    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


def _result_to_proto(result: dict[str, Any]) -> trainer_pb2.JobResult:
    data = dict(result)
    data["sweep"] = [{**row, "state": f"JOB_STATE_{row['state']}"} for row in data.get("sweep", [])]
    if data.get("operating_point"):
        point = data["operating_point"]
        data["operating_point"] = {**point, "goal": f"THRESHOLD_GOAL_{str(point.get('goal', '')).upper()}"}
    if data.get("gate"):
        data["gate"] = {**data["gate"], "on_fail": f"GATE_ACTION_{str(data['gate'].get('on_fail', '')).upper()}"}
    return _parse(data, trainer_pb2.JobResult())


def job_to_proto(record: JobRecord) -> trainer_pb2.Job:
    job = trainer_pb2.Job(
        job_id=record.job_id, state=_state(record.state), attempt=record.attempt, max_attempts=record.max_attempts,
        worker=record.worker, created_at=record.created_at, started_at=record.started_at,
        finished_at=record.finished_at, error=record.error, trainable_params=record.trainable_params,
        total_params=record.total_params, unreadable_images=record.unreadable_images,
        parent_job_id=record.parent_job_id, child_job_ids=record.child_job_ids,
        checkpoint_epoch=record.checkpoint_epoch,
    )
    if record.spec is not None:
        _parse(record.spec, job.spec)
    if record.sweep is not None:
        _parse(record.sweep, job.sweep)
    if record.progress:
        _parse(record.progress, job.progress)
    if record.result:
        job.result.CopyFrom(_result_to_proto(record.result))
    if record.dataset_report:
        _parse(record.dataset_report, job.dataset_report)
    return job


def event_to_proto(job_id: str, event: Event) -> trainer_pb2.JobEvent:
    out = trainer_pb2.JobEvent(job_id=job_id, sequence=event.sequence, timestamp=event.timestamp,
                               state=_state(event.state))
    if event.kind == "progress":
        _parse(event.data, out.progress)
    elif event.kind == "epoch":
        _parse(event.data, out.epoch)
    elif event.kind == "finished":
        out.finished.CopyFrom(job_to_proto(JobRecord.model_validate(event.data["job"])))
    else:
        out.message = str(event.data.get("message", ""))
    return out


# -- the servicer --------------------------------------------------------------------------------

class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, settings: TrainerSettings, queue: JobQueue, registry: Registry, *,
                 metrics: TrainerMetrics | None = None) -> None:
        self.settings = settings
        self.queue = queue
        self.registry = registry
        self.metrics = metrics if metrics is not None else TrainerMetrics()

    # -- jobs -------------------------------------------------------------------------------------
    def _validate(self, spec: dict[str, Any]) -> JobConfig:
        config = parse_job_spec(spec, self.settings.common.data_roots)
        validate_group_lr(config)
        return config

    def _check(self, configs: list[JobConfig]) -> dict[str, Any]:
        """Header-level check of each distinct dataset / split of the jobs (FAILED_PRECONDITION when one is
        pointless); returns the first report. The worker makes the full (decoding) pass."""
        reports: dict[tuple[str, int, float], dict[str, Any]] = {}
        for config in configs:
            key = (config.dataset_path, config.recipe.seed, config.recipe.val_fraction)
            if key not in reports:
                check = check_dataset(Path(key[0]), seed=key[1], val_fraction=key[2], decode=False,
                                      cache_dir=Path(self.settings.common.cache_dir))
                check.raise_for_errors()
                reports[key] = check.report
        return next(iter(reports.values()))

    def _record_report(self, job_ids: list[str], report: dict[str, Any]) -> None:
        """Store the report with the jobs and emit its warnings as their first events."""
        for job_id in job_ids:
            self.queue.update(job_id, dataset_report=report)
            for warning in report["warnings"]:
                self.queue.emit(job_id, "message", {"message": f"dataset check: {warning}"}, QUEUED)

    def SubmitJob(self, request: trainer_pb2.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        kind = request.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument("SubmitJob needs a job or a sweep")
        if request.max_attempts > MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(f"max_attempts must be at most {MAX_ATTEMPTS_LIMIT}, got {request.max_attempts}")
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters")
        max_attempts = request.max_attempts or self.settings.max_attempts
        if kind == "job":
            spec = json_format.MessageToDict(request.job, preserving_proto_field_name=True)
            report = self._check([self._validate(spec)])
            record, dedup = self.queue.submit(spec=spec, max_attempts=max_attempts,
                                              idempotency_key=request.idempotency_key, trace=tracing.current_context())
        else:
            sweep = json_format.MessageToDict(request.sweep, preserving_proto_field_name=True)
            children = expand_sweep(sweep)
            report = self._check([self._validate(child) for child in children])
            record, dedup = self.queue.submit(sweep=sweep, children=children, max_attempts=max_attempts,
                                              idempotency_key=request.idempotency_key, trace=tracing.current_context())
        if not dedup:
            self._record_report([record.job_id, *record.child_job_ids], report)
            self.metrics.submitted.labels(kind).inc()
        log.info("job %s %s (%s)", record.job_id, "deduplicated" if dedup else "submitted", kind)
        response = trainer_pb2.SubmitJobResponse(job_id=record.job_id, deduplicated=dedup,
                                                 child_job_ids=record.child_job_ids)
        _parse(report, response.dataset_report)
        return response

    def CheckDataset(self, request: trainer_pb2.CheckDatasetRequest, context: grpc.ServicerContext) -> Any:
        if not request.dataset_path:
            raise InvalidArgument("dataset_path is required")
        val_fraction = request.val_fraction if request.HasField("val_fraction") else DEFAULT_VAL_FRACTION
        if not 0.0 < val_fraction <= 0.5:
            raise InvalidArgument(f"val_fraction must be in (0, 0.5], got {val_fraction:g}")
        root, _folder = inspect_dataset(request.dataset_path, self.settings.common.data_roots)
        check = check_dataset(root, seed=request.seed, val_fraction=val_fraction,
                              cache_dir=Path(self.settings.common.cache_dir))
        return _parse(check.report, trainer_pb2.DatasetReport())

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> Any:
        return job_to_proto(self.queue.get(_job_id(request.job_id)))

    def WatchJob(self, request: trainer_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        job_id = _job_id(request.job_id)
        self.queue.get(job_id)  # NOT_FOUND for an unknown job
        after = request.after_sequence
        idle_rounds = 0
        while context.is_active():
            events = self.queue.events(job_id, after=after, block_ms=WATCH_BLOCK_MS)
            for event in events:
                yield event_to_proto(job_id, event)
                after = event.sequence
                if event.kind == "finished":
                    return
            if events:
                idle_rounds = 0
                continue
            idle_rounds += 1
            record = self.queue.get(job_id)
            if record.state in TERMINAL and idle_rounds > 1:
                # Ended without a (still stored) terminal event: end the stream with the job as it is.
                yield trainer_pb2.JobEvent(job_id=job_id, sequence=after, state=_state(record.state),
                                           finished=job_to_proto(record))
                return

    def CancelJob(self, request: trainer_pb2.CancelJobRequest, context: grpc.ServicerContext) -> Any:
        job_id = _job_id(request.job_id)
        record = self.queue.request_cancel(job_id)
        if record.state not in TERMINAL:
            self.queue.emit(job_id, "message", {"message": "cancel requested"}, record.state)
        return job_to_proto(record)

    def ListJobs(self, request: trainer_pb2.ListJobsRequest, context: grpc.ServicerContext) -> Any:
        states = {trainer_pb2.JobState.Name(s).removeprefix("JOB_STATE_") for s in request.states if s}
        limit = min(request.limit or 100, MAX_LIST)
        records = self.queue.list(states or None, limit=limit, parent=request.parent_job_id)
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(r) for r in records])

    # -- models -----------------------------------------------------------------------------------
    def _info(self, manifest: Manifest) -> common_pb2.ModelInfo:
        return manifest_to_info(manifest, self.registry.aliases_of(manifest.name, manifest.version))

    def _resolve(self, ref: common_pb2.ModelRef) -> Manifest:
        if not ref.name:
            raise InvalidArgument("model.name is required")
        return self.registry.resolve(ref.name, ref.version, ref.alias)

    def ListModels(self, request: trainer_pb2.ListModelsRequest, context: grpc.ServicerContext) -> Any:
        names = [request.name] if request.name else self.registry.names()
        models = [self._info(self.registry.manifest(name, v)) for name in names for v in self.registry.versions(name)]
        return trainer_pb2.ListModelsResponse(models=models)

    def GetModel(self, request: trainer_pb2.GetModelRequest, context: grpc.ServicerContext) -> Any:
        return self._info(self._resolve(request.model))

    def SetAlias(self, request: trainer_pb2.SetAliasRequest, context: grpc.ServicerContext) -> Any:
        if not request.name or not request.alias:
            raise InvalidArgument("name and alias are required")
        if request.version == 0:
            raise InvalidArgument("version is required (the version the alias should point at)")
        self.registry.manifest(request.name, request.version)  # NOT_FOUND for a missing version
        self.registry.set_alias(request.name, request.alias, request.version)
        return self._info(self.registry.manifest(request.name, request.version))

    def CompareModels(self, request: trainer_pb2.CompareModelsRequest, context: grpc.ServicerContext) -> Any:
        a, b = self._resolve(request.a), self._resolve(request.b)
        state_a = _parameters_only(a, self.registry.load_state_dict(a.name, a.version))
        state_b = _parameters_only(b, self.registry.load_state_dict(b.name, b.version))
        cosine, compared, skipped = cosine_similarity(state_a, state_b)
        return trainer_pb2.CompareModelsResponse(cosine_similarity=cosine, compared_tensors=compared,
                                                 skipped_tensors=skipped)


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is required")
    return job_id


def _parameters_only(manifest: Manifest, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop buffers (BatchNorm running statistics): the thesis compares parameters.

    The parameter names come from the architecture built on the meta device (no memory, no weights).
    """
    try:
        with torch.device("meta"):
            model = build_model(manifest.architecture, len(manifest.classes), pretrained=False,
                                image_size=manifest.preprocessing.image_size)
    except Exception as exc:  # noqa: BLE001 - an architecture this build cannot make: compare everything
        log.warning("comparing every tensor of %s v%d: %s", manifest.name, manifest.version, exc)
        return state
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k in names}
