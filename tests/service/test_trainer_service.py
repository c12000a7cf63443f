"""Trainer over a real gRPC channel, real Redis (own key prefix), a temp registry and in-thread workers."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
import timm
import torch

from common.jobqueue import JobRecord
from common.models.zoo import build_model
from protos.zdm.v1 import common_pb2, trainer_pb2
from services.trainer import worker as worker_module
from tests.service.trainer_support import IMAGE_SIZE, Harness, job_spec, make_dataset, make_settings, trainer_harness


@pytest.fixture
def harness(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    with trainer_harness(settings, redis_client) as h:
        yield h


def _state(job: trainer_pb2.Job) -> str:
    return trainer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


def _watch_all(h: Harness, job_id: str, out: list[trainer_pb2.JobEvent]) -> None:
    for event in h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=120):
        out.append(event)


def test_job_trains_streams_publishes_and_serves_models(harness: Harness, tmp_path) -> None:
    h = harness
    dataset = make_dataset(h.settings)
    (dataset / "train" / "ok_front" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    spec = job_spec(dataset, name="casting-m", epochs=2, augment=True, schedule=trainer_pb2.SCHEDULE_COSINE,
                    warmup_epochs=0.5, gate=trainer_pb2.QualityGateSpec())
    spec.publish_aliases.append("staging")
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec, idempotency_key="k-1"))
    again = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec, idempotency_key="k-1"))
    assert again.deduplicated and again.job_id == submitted.job_id
    other = trainer_pb2.JobSpec()
    other.CopyFrom(spec)
    other.recipe.epochs = 3
    with pytest.raises(grpc.RpcError) as err:
        h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=other, idempotency_key="k-1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    events: list[trainer_pb2.JobEvent] = []
    watcher = threading.Thread(target=_watch_all, args=(h, submitted.job_id, events))
    watcher.start()
    with h.running_worker():
        watcher.join(timeout=120)
    assert not watcher.is_alive()

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "finished" and "progress" in kinds and kinds.count("epoch") == 2
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    progress = next(e.progress for e in events if e.WhichOneof("event") == "progress")
    assert progress.epochs == 2 and progress.batches > 0 and progress.images_per_second > 0 and progress.loss > 0
    epoch = next(e.epoch for e in events if e.WhichOneof("event") == "epoch")
    assert epoch.train.split == "train" and epoch.val.split == "val" and 0 <= epoch.val.accuracy <= 1
    assert epoch.val.class_names == ["def_front", "ok_front"] and sum(epoch.val.confusion) == epoch.val.samples

    job = events[-1].finished
    assert _state(job) == "SUCCEEDED", job.error
    assert job.unreadable_images == 1
    assert job.attempt == 1 and job.result.epochs_run == 2
    assert 0 < job.trainable_params == job.total_params
    metrics = {m.split: m for m in job.result.metrics}
    assert set(metrics) == {"train", "val", "test", "val@op", "test@0.5", "test@op"}
    assert all(len(m.per_class) == 2 and 0 <= m.balanced_accuracy <= 1 for m in metrics.values())
    point = job.result.operating_point
    assert point.goal == trainer_pb2.THRESHOLD_GOAL_RECALL and point.target_recall == pytest.approx(0.99)
    assert 0 < point.threshold < 1 and point.recall >= 0.99 and point.goal_met
    assert metrics["test@op"].threshold == pytest.approx(point.threshold) and metrics["test@0.5"].threshold == 0.5
    assert job.result.gate.passed and job.result.gate.aliases_set and job.result.preset == "default"
    assert job.result.gate.balanced_accuracy >= job.result.gate.required_balanced_accuracy == pytest.approx(0.75)
    assert 0.0 < job.result.cosine_to_initial < 1.0
    ref = job.result.model
    assert ref.name == "casting-m" and ref.version == 1

    # the registry over gRPC
    info = h.stub.GetModel(trainer_pb2.GetModelRequest(model=common_pb2.ModelRef(name="casting-m", alias="staging")))
    assert info.version == 1 and info.aliases == ["staging"] and info.architecture == "test_resnet"
    assert list(info.classes) == ["def_front", "ok_front"] and info.defect_class == "def_front"
    assert info.preprocessing.image_size == IMAGE_SIZE and len(info.preprocessing.mean) == 3
    assert info.freeze.mode == common_pb2.FREEZE_MODE_UNFROZEN
    assert info.trainable_params == job.trainable_params and info.job_id == submitted.job_id
    assert info.explanation.layer and info.weights_source == "random" and info.dataset_fingerprint
    manifest = json.loads(info.manifest_json)
    assert manifest["recipe"]["lr"] == pytest.approx(1e-3) and manifest["recipe"]["schedule"] == "cosine"
    assert manifest["cosine_to_initial"] == pytest.approx(job.result.cosine_to_initial)
    assert manifest["preset"] == "default" and manifest["recipe"]["preset"] == "default"
    assert manifest["operating_point"]["threshold"] == pytest.approx(point.threshold)
    assert manifest["operating_point"]["curve"] and manifest["gate"]["passed"]
    listed = h.stub.ListModels(trainer_pb2.ListModelsRequest()).models
    assert [(m.name, m.version) for m in listed] == [("casting-m", 1)]
    aliased = h.stub.SetAlias(trainer_pb2.SetAliasRequest(name="casting-m", alias="production", version=1))
    assert sorted(aliased.aliases) == ["production", "staging"]
    same = h.stub.CompareModels(trainer_pb2.CompareModelsRequest(a=ref, b=ref))
    assert same.cosine_similarity == pytest.approx(1.0) and same.compared_tensors > 0

    # timm's local-dir loader rebuilds the published model
    folder = h.registry.path("casting-m", 1)
    assert (folder / "config.json").is_file() and (folder / "history.json").is_file()
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    ours = build_model("test_resnet", 2, image_size=IMAGE_SIZE)
    ours.load_state_dict(h.registry.load_state_dict("casting-m", 1))
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.allclose(loaded(x), ours.eval()(x), atol=1e-5)

    jobs = h.stub.ListJobs(trainer_pb2.ListJobsRequest(states=[trainer_pb2.JOB_STATE_SUCCEEDED])).jobs
    assert [j.job_id for j in jobs] == [submitted.job_id]
    assert not (h.settings.checkpoint_dir / submitted.job_id).exists()  # cleaned up after success


def test_sweep_of_freeze_policies_reports_trainable_params_and_a_table(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=8, test_per_class=2)
    base = job_spec(dataset, name="study", epochs=1, max_batches_per_epoch=2)
    arms = [trainer_pb2.SweepArm(freeze=common_pb2.FreezePolicy(mode=m), label=label, head_lr=1e-2)
            for m, label in ((common_pb2.FREEZE_MODE_FROZEN, "frozen"), (common_pb2.FREEZE_MODE_PARTIAL, "partial"),
                             (common_pb2.FREEZE_MODE_UNFROZEN, "unfrozen"))]
    sweep = trainer_pb2.SweepSpec(base=base, architectures=["test_resnet"], arms=arms)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(sweep=sweep))
    assert len(submitted.child_job_ids) == 3
    with h.running_worker():
        parent = h.wait_state(submitted.job_id, {"SUCCEEDED", "FAILED"}, timeout=120)
    assert _state(parent) == "SUCCEEDED", parent.error
    rows = {row.arm: row for row in parent.result.sweep}
    assert set(rows) == {"frozen", "partial", "unfrozen"}
    assert all(row.state == trainer_pb2.JOB_STATE_SUCCEEDED and row.model.version == 1 for row in rows.values())
    frozen, partial, unfrozen = (rows[k].trainable_params for k in ("frozen", "partial", "unfrozen"))
    head = sum(p.numel() for p in build_model("test_resnet", 2).fc.parameters())
    assert frozen == head < partial < unfrozen
    children = {c.job_id: c for c in h.stub.ListJobs(trainer_pb2.ListJobsRequest(parent_job_id=submitted.job_id)).jobs}
    assert set(children) == set(submitted.child_job_ids)
    assert all(c.total_params == unfrozen for c in children.values())
    assert rows["frozen"].cosine_to_initial > rows["unfrozen"].cosine_to_initial
    messages = h.messages(submitted.job_id)
    table = next(m for m in messages if m.startswith("sweep finished"))
    assert "frozen" in table and "cosine(test_resnet: frozen vs partial)" in table


def test_cancel_stops_a_running_job_within_a_batch(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=16, test_per_class=2)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, epochs=200, batch_size=2)))
    with h.running_worker():
        stream = h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id), timeout=120)
        before: list[trainer_pb2.JobEvent] = []
        for event in stream:
            before.append(event)
            if event.WhichOneof("event") == "progress" and event.progress.batch >= 2:
                break
        stream.cancel()
        cancelled_at = time.monotonic()
        h.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=submitted.job_id))
        job = h.wait_state(submitted.job_id, {"CANCELLED", "SUCCEEDED", "FAILED"}, timeout=30)
        assert time.monotonic() - cancelled_at < 10
    assert _state(job) == "CANCELLED"
    after = list(h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id,
                                                             after_sequence=before[-1].sequence), timeout=30))
    assert after[-1].WhichOneof("event") == "finished"
    cancel_note = next(i for i, e in enumerate(after) if e.message == "cancel requested")
    late_batches = [e for e in after[cancel_note:] if e.WhichOneof("event") == "progress"]
    assert len(late_batches) <= 1  # at most the batch that was running when the cancel arrived
    assert not h.registry.versions("m")


def test_failures_retry_with_backoff_then_dead_letter(harness: Harness, monkeypatch) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=1)
    calls = {"n": 0}

    def broken_fit(*_args, **_kwargs):
        calls["n"] += 1
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(worker_module, "fit", broken_fit)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset), max_attempts=2))
    with h.running_worker():
        job = h.wait_state(submitted.job_id, {"FAILED", "SUCCEEDED"}, timeout=30)
    assert calls["n"] == 2 and job.attempt == 2
    assert "disk on fire" in job.error
    messages = [e.message for e in h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id), timeout=10)]
    assert any("retrying in" in m for m in messages)
    dead = h.queue.dead_letters()
    assert dead and dead[0]["job_id"] == submitted.job_id and "disk on fire" in dead[0]["reason"]


def test_a_job_whose_dataset_vanished_fails_at_once(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=1)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset)))
    for path in sorted(dataset.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    dataset.rmdir()
    with h.running_worker():
        job = h.wait_state(submitted.job_id, {"FAILED", "SUCCEEDED"}, timeout=30)
    assert job.attempt == 1 and "NotFound" in job.error
    assert h.queue.dead_letters()[0]["job_id"] == submitted.job_id


# -- bad input -----------------------------------------------------------------------------------

def _bad_specs(dataset, data_root, outside):
    empty = data_root / "empty"
    (empty / "train").mkdir(parents=True)
    single = data_root / "single"
    (single / "train" / "ok_front").mkdir(parents=True)
    for p in (dataset / "train" / "ok_front").glob("*.png"):
        (single / "train" / "ok_front" / p.name).write_bytes(p.read_bytes())

    def spec(**changes):
        s = job_spec(dataset)
        for key, value in changes.items():
            obj = s
            *path, last = key.split(".")
            for part in path:
                obj = getattr(obj, part)
            setattr(obj, last, value)
        return s

    named = spec(**{"weights.kind": trainer_pb2.WEIGHTS_KIND_NAMED, "weights.location": "efficientnet-lite0-pypi"})
    group = spec()
    group.recipe.group_lr["no_such_layer"] = 1e-3
    return {
        "unknown architecture": (spec(architecture="resnet-9000"), grpc.StatusCode.INVALID_ARGUMENT, "valid:"),
        "lr zero": (spec(**{"recipe.lr": 0.0}), grpc.StatusCode.INVALID_ARGUMENT, "recipe.lr"),
        "lr huge": (spec(**{"recipe.lr": 5.0}), grpc.StatusCode.INVALID_ARGUMENT, "recipe.lr"),
        "epochs absurd": (spec(**{"recipe.epochs": 5000}), grpc.StatusCode.INVALID_ARGUMENT, "recipe.epochs"),
        "batch absurd": (spec(**{"recipe.batch_size": 100000}), grpc.StatusCode.INVALID_ARGUMENT, "batch_size"),
        "val fraction": (spec(**{"recipe.val_fraction": 0.9}), grpc.StatusCode.INVALID_ARGUMENT, "val_fraction"),
        "bad model name": (spec(model_name="../evil"), grpc.StatusCode.INVALID_ARGUMENT, "model name"),
        "outside roots": (spec(dataset_path=str(outside)), grpc.StatusCode.PERMISSION_DENIED, "outside"),
        "missing dataset": (spec(dataset_path=str(data_root / "nope")), grpc.StatusCode.NOT_FOUND, "does not exist"),
        "empty dataset": (spec(dataset_path=str(empty)), grpc.StatusCode.INVALID_ARGUMENT, "at least 2 classes"),
        "single class": (spec(dataset_path=str(single)), grpc.StatusCode.INVALID_ARGUMENT, "at least 2 classes"),
        "named weights on wrong arch": (named, grpc.StatusCode.INVALID_ARGUMENT, "efficientnet_lite0"),
        "unknown layer group": (group, grpc.StatusCode.INVALID_ARGUMENT, "no_such_layer"),
        "unknown defect class": (spec(defect_class="rust"), grpc.StatusCode.INVALID_ARGUMENT, "defect_class"),
    }


def test_bad_inputs_get_clear_errors_and_nothing_is_queued(harness: Harness, tmp_path) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for label, (spec, code, text) in _bad_specs(dataset, h.settings.common.data_roots[0], outside).items():
        with pytest.raises(grpc.RpcError) as err:
            h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec))
        assert err.value.code() == code, label
        assert text in err.value.details(), (label, err.value.details())
    bad_sweep = trainer_pb2.SweepSpec(base=job_spec(dataset), architectures=["test_resnet", "nope-net"])
    calls = [
        (lambda: h.stub.SubmitJob(trainer_pb2.SubmitJobRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(sweep=bad_sweep)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: h.stub.GetJob(trainer_pb2.GetJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND),
        (lambda: h.stub.GetJob(trainer_pb2.GetJobRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: list(h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id="nope"))), grpc.StatusCode.NOT_FOUND),
        (lambda: h.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND),
        (lambda: h.stub.GetModel(trainer_pb2.GetModelRequest(model=common_pb2.ModelRef(name="nope"))),
         grpc.StatusCode.NOT_FOUND),
        (lambda: h.stub.GetModel(trainer_pb2.GetModelRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: h.stub.SetAlias(trainer_pb2.SetAliasRequest(name="nope", alias="production", version=1)),
         grpc.StatusCode.NOT_FOUND),
        (lambda: h.stub.SetAlias(trainer_pb2.SetAliasRequest(name="nope", alias="production")),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, err.value.details()
    assert h.queue.list() == []
    assert h.stub.ListModels(trainer_pb2.ListModelsRequest()).models == []


def test_cancel_of_a_queued_job_ends_it_without_a_worker(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=1)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset)))
    job = h.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=submitted.job_id))
    assert _state(job) == "CANCELLED"
    events = list(h.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id), timeout=10))
    assert events[-1].WhichOneof("event") == "finished" and _state(events[-1].finished) == "CANCELLED"
    with h.running_worker():  # the worker drops the cancelled entry instead of training it
        time.sleep(0.3)
    assert JobRecord.model_validate(h.queue.get(submitted.job_id)).state == "CANCELLED"
    assert not h.registry.versions("m")
