"""The dataset check over a real gRPC channel: CheckDataset, SubmitJob's report and events, bad datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import grpc
import pytest

from protos.zdm.v1 import trainer_pb2
from tests.service.trainer_support import Harness, job_spec, make_dataset, make_settings, trainer_harness


@pytest.fixture
def harness(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    with trainer_harness(settings, redis_client) as h:
        yield h


def _leak(dataset: Path, n: int) -> None:
    """Copy the first ``n`` training images of each class into test/ (byte-identical duplicates)."""
    for cls in ("def_front", "ok_front"):
        for path in sorted((dataset / "train" / cls).glob("*.png"))[:n]:
            shutil.copy(path, dataset / "test" / cls / f"leaked_{path.name}")


def _metrics(job: trainer_pb2.Job) -> dict[str, trainer_pb2.SplitMetrics]:
    return {m.split: m for m in job.result.metrics}


def test_check_and_submit_report_duplicates_and_test_metrics_without_them(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=12, test_per_class=4)
    _leak(dataset, 2)
    source = dataset / "train" / "def_front" / "def_0011.png"
    recoded = cv2.imencode(".jpg", cv2.imread(str(source)), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    (dataset / "test" / "def_front" / "near_copy.jpg").write_bytes(recoded)
    (dataset / "train" / "ok_front" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")

    # SubmitJob: the header-level pass (exact copies, headers, truncation), quick
    spec = job_spec(dataset, name="dedup", epochs=1)
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec))
    header = submitted.dataset_report
    assert not header.decoded and header.exact_duplicates.groups == 4 and header.near_duplicates.groups == 0
    assert header.unreadable_count == 1 and header.test_after_dedup == 9
    stored = h.stub.GetJob(trainer_pb2.GetJobRequest(job_id=submitted.job_id)).dataset_report
    assert list(stored.warnings) == list(header.warnings)

    # CheckDataset: the full pass (decodes: near duplicates too)
    report = h.stub.CheckDataset(trainer_pb2.CheckDatasetRequest(dataset_path=str(dataset)))
    assert report.decoded and list(report.classes) == ["def_front", "ok_front"]
    assert report.images == 12 * 2 + 1 + 4 * 2 + 4 + 1
    assert report.exact_duplicates.test_files_in_train == 4 and report.near_duplicates.test_files_in_train == 1
    assert report.test_after_dedup == 8
    assert report.unreadable_count == 1 and report.unreadable[0].path == "train/ok_front/zz_corrupt.png"
    assert [v.value for v in report.channels] == ["1", "3"] and [v.value for v in report.bit_depths] == ["8"]
    assert report.width.min == report.width.max == 32 and not report.errors

    dropping = trainer_pb2.JobSpec()
    dropping.CopyFrom(spec)
    dropping.model_name, dropping.drop_test_duplicates = "dropped", True
    dropped = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=dropping))
    assert dropped.dataset_report.cached and dropped.dataset_report.decoded  # CheckDataset's facts reused

    with h.running_worker():
        job = h.wait_state(submitted.job_id, {"SUCCEEDED", "FAILED"}, timeout=120)
        other = h.wait_state(dropped.job_id, {"SUCCEEDED", "FAILED"}, timeout=120)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert other.state == trainer_pb2.JOB_STATE_SUCCEEDED, other.error
    assert job.dataset_report.decoded and job.dataset_report.test_after_dedup == 8  # the worker's full pass
    messages = h.messages(submitted.job_id, timeout=60)
    assert any(m.startswith("dataset check:") and "exact duplicates" in m for m in messages)
    assert any(m.startswith("dataset check:") and "unreadable" in m for m in messages)
    assert any(m.startswith("dataset check:") and "near duplicates" in m for m in messages)  # from the worker

    metrics = _metrics(job)
    assert metrics["test"].samples == 13 and metrics["test_dedup"].samples == 8
    metrics = _metrics(other)
    assert metrics["test"].samples == 8 and "test_dedup" not in metrics
    manifest = json.loads(h.stub.GetModel(trainer_pb2.GetModelRequest(model=job.result.model)).manifest_json)
    assert manifest["dataset_check"]["exact_duplicates"]["test_files_in_train"] == 4
    assert manifest["dataset_check"]["near_duplicates"]["test_files_in_train"] == 1
    assert manifest["ok_classes"] == ["ok_front"] and manifest["recipe"]["drop_test_duplicates"] is False


def _single_class(dataset: Path) -> None:
    for split in ("train", "test"):
        shutil.rmtree(dataset / split / "ok_front")


def _empty_class(dataset: Path) -> None:
    for path in (dataset / "train" / "ok_front").iterdir():
        path.unlink()


def _only_copies_in_test(dataset: Path) -> None:
    for cls in ("def_front", "ok_front"):
        for path in (dataset / "test" / cls).iterdir():
            path.unlink()
    _leak(dataset, 3)


def _class_of_corrupt_files(dataset: Path) -> None:
    for path in (dataset / "train" / "ok_front").iterdir():
        path.write_bytes(path.read_bytes()[:40])  # truncated PNGs


@pytest.mark.parametrize(("damage", "code", "message"), [
    (_single_class, grpc.StatusCode.INVALID_ARGUMENT, "at least 2 classes"),
    (_empty_class, grpc.StatusCode.INVALID_ARGUMENT, "has no images"),
    (_class_of_corrupt_files, grpc.StatusCode.INVALID_ARGUMENT, "no readable image"),
    (_only_copies_in_test, grpc.StatusCode.FAILED_PRECONDITION, "test split measures nothing"),
])
def test_bad_datasets_are_refused_before_anything_is_queued(harness: Harness, damage, code, message) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=6, test_per_class=3)
    damage(dataset)
    with pytest.raises(grpc.RpcError) as err:
        h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset)))
    assert err.value.code() == code and message in err.value.details()
    assert not h.stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs
    if code == grpc.StatusCode.FAILED_PRECONDITION:  # the check itself answers, listing the problem
        report = h.stub.CheckDataset(trainer_pb2.CheckDatasetRequest(dataset_path=str(dataset)))
        assert report.test_after_dedup == 0 and message in report.errors[0]
    else:
        with pytest.raises(grpc.RpcError) as err:
            h.stub.CheckDataset(trainer_pb2.CheckDatasetRequest(dataset_path=str(dataset)))
        assert err.value.code() == code


def test_check_dataset_rejects_bad_requests(harness: Harness, tmp_path: Path) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=2)
    cases = [
        (trainer_pb2.CheckDatasetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (trainer_pb2.CheckDatasetRequest(dataset_path=str(dataset), val_fraction=0.9), grpc.StatusCode.INVALID_ARGUMENT),
        (trainer_pb2.CheckDatasetRequest(dataset_path=str(tmp_path.parent)), grpc.StatusCode.PERMISSION_DENIED),
        (trainer_pb2.CheckDatasetRequest(dataset_path="missing"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            h.stub.CheckDataset(request)
        assert err.value.code() == code, request


def test_zdm_dataset_check_prints_the_report(harness: Harness, monkeypatch) -> None:
    from typer.testing import CliRunner

    from client.cli import app

    h = harness
    dataset = make_dataset(h.settings, train_per_class=6, test_per_class=3)
    _leak(dataset, 1)
    monkeypatch.setenv("ZDM_TRAINER_ADDR", h.address)
    runner = CliRunner()
    result = runner.invoke(app, ["dataset", "check", str(dataset), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["exact_duplicates"]["test_files_in_train"] == 2 and report["test_after_dedup"] == 6
    assert [row["split"] for row in report["splits"]] == ["train", "val", "test"]
    result = runner.invoke(app, ["dataset", "check", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "exact duplicates: 2 groups" in result.output and "test images without copies" in result.output

    _only_copies_in_test(dataset)
    result = runner.invoke(app, ["dataset", "check", str(dataset)])
    assert result.exit_code == 1 and "measures nothing" in result.output
    result = runner.invoke(app, ["dataset", "check", str(dataset.parent)])  # the data root: no train/ there
    assert result.exit_code == 1 and "INVALID_ARGUMENT" in result.output
