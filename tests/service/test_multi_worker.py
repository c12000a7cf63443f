"""Scale-out: two worker processes on one Redis stream run six jobs, each exactly once; multi-device jobs."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import threading
import time
from collections import Counter

import grpc
import pytest
import torch

from common.settings import TrainerSettings
from protos.zdm.v1 import trainer_pb2
from services.trainer.runtime import MAX_CPU_PROCESSES
from tests.service.trainer_support import Harness, job_spec, make_dataset, make_settings, trainer_harness, worker_process

WORKERS = ("worker-a", "worker-b")
MODEL_NAMES = ("line-1", "line-2", "line-3")


@pytest.fixture
def harness(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    # A long lease: nothing dies here, so no job may be taken over because a loaded machine was slow.
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root, lease=15.0)
    with trainer_harness(settings, redis_client) as h:
        yield h


class WorkerProcess:
    """``python -m services.trainer.worker`` on the test's Redis prefix, registry and data; output collected."""

    def __init__(self, settings: TrainerSettings, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = worker_process(settings, name, ZDM_LOG_LEVEL="INFO")
        self._reader = threading.Thread(target=self._read, daemon=True)  # also keeps the pipe from filling up
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def started(self) -> bool:
        return any(f"worker {self.name} started" in line for line in self.lines)

    def stop(self) -> int:
        """SIGTERM (an idle worker exits at once), SIGKILL if that takes longer than 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def _wait_until_started(workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    """Both workers are in their loop before any job is submitted, so both can get jobs."""
    deadline = time.monotonic() + timeout
    while not all(w.started() for w in workers):
        if any(w.proc.poll() is not None for w in workers) or time.monotonic() > deadline:
            pytest.fail("a worker did not start:\n" + "\n".join(w.output for w in workers))
        time.sleep(0.1)


def test_two_worker_processes_run_six_jobs_each_exactly_once(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=10, test_per_class=2)
    workers = [WorkerProcess(h.settings, name) for name in WORKERS]
    try:
        _wait_until_started(workers)
        job_ids = []
        for i in range(6):
            # the last job trains on 2 gloo ranks: a multi-device job is one job like any other
            spec = job_spec(dataset, name=MODEL_NAMES[i % 3], epochs=2, batch_size=4, seed=i, devices=2 if i == 5 else 1)
            job_ids.append(h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec)).job_id)
        jobs = [h.wait_state(job_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=120) for job_id in job_ids]
    finally:
        codes = [w.stop() for w in workers]
    outputs = "\n".join(w.output for w in workers)
    for job in jobs:
        assert trainer_pb2.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", (job.error, outputs)
        assert job.attempt == 1 and job.worker in WORKERS and job.result.epochs_run == 2
    assert codes == [0, 0], outputs
    by_worker = Counter(job.worker for job in jobs)
    assert set(by_worker) == set(WORKERS), by_worker  # both took jobs

    # one publication per job: 6 versions across the model names, each naming a different job
    published = {(name, v): h.registry.manifest(name, v) for name in MODEL_NAMES for v in h.registry.versions(name)}
    assert sorted(published) == [(name, v) for name in MODEL_NAMES for v in (1, 2)]
    assert sorted(m.job_id for m in published.values()) == sorted(job_ids)
    for job in jobs:
        manifest = published[(job.result.model.name, job.result.model.version)]
        assert manifest.job_id == job.job_id
    two_device = published[(jobs[5].result.model.name, jobs[5].result.model.version)]
    assert two_device.recipe["devices"] == 2 and "×2 ranks (gloo DDP)" in two_device.recipe["runtime"]

    # each job started once and was acknowledged: nothing pending, nothing delayed, nothing dead-lettered
    for job_id in job_ids:
        messages = h.messages(job_id)
        assert sum(m.startswith("attempt ") for m in messages) == 1, messages
        assert sum(m.startswith("published ") for m in messages) == 1, messages
    assert h.queue.outstanding() == 0 and h.queue.dead_letters() == []


def test_cancelling_a_two_device_job_stops_its_ranks(harness: Harness) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=16, test_per_class=2)
    spec = job_spec(dataset, name="wide", epochs=200, batch_size=4, devices=2)
    job_id = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec)).job_id
    with h.running_worker(name="in-process"):
        deadline = time.monotonic() + 90
        while not h.queue.get(job_id).progress:  # rank 0's progress reached Redis through the supervisor
            assert time.monotonic() < deadline, h.queue.get(job_id)
            time.sleep(0.05)
        h.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id))
        cancelled_at = time.monotonic()
        job = h.wait_state(job_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=60)
        assert time.monotonic() - cancelled_at < 15
    assert trainer_pb2.JobState.Name(job.state) == "JOB_STATE_CANCELLED", job.error
    assert multiprocessing.active_children() == []
    assert h.registry.versions("wide") == []
    assert any("×2 ranks (gloo DDP)" in m for m in h.messages(job_id))


def test_submit_rejects_more_devices_than_the_trainer_has(harness: Harness, monkeypatch) -> None:
    h = harness
    dataset = make_dataset(h.settings, train_per_class=4, test_per_class=1)
    with pytest.raises(grpc.RpcError) as err:  # on CPU, devices are processes: at most MAX_CPU_PROCESSES
        h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, devices=MAX_CPU_PROCESSES + 1)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "devices are processes" in err.value.details()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a trainer with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(grpc.RpcError) as err:
        h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, devices=2)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sees 1 CUDA device" in err.value.details()
    assert h.queue.list() == []
