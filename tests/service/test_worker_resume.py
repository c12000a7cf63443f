"""A worker process dies (SIGKILL) or is stopped (SIGTERM) mid-job: another worker finishes it, once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from protos.zdm.v1 import trainer_pb2
from tests.service.trainer_support import Harness, job_spec, make_dataset, make_settings, trainer_harness, worker_process


@pytest.fixture
def harness(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root, lease=1.5)
    with trainer_harness(settings, redis_client) as h:
        yield h


def _wait_for_checkpoint(h: Harness, job_id: str, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        record = h.queue.get(job_id)
        if record.checkpoint_epoch >= 1:
            return record.checkpoint_epoch
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"worker process never checkpointed (state {record.state}):\n{out}")
        time.sleep(0.01)


@contextmanager
def _checkpointed_worker(h: Harness, job_id: str, name: str) -> Iterator[subprocess.Popen]:
    """A ``--burst`` worker process once it has checkpointed the job; killed if still alive after the block."""
    proc = worker_process(h.settings, name, "--burst")
    try:
        _wait_for_checkpoint(h, job_id, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def _submit_long_job(h: Harness) -> str:
    dataset = make_dataset(h.settings, train_per_class=24, test_per_class=2)
    spec = job_spec(dataset, name="resumable", epochs=12, batch_size=4, augment=True)
    return h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec)).job_id


def test_killed_worker_job_is_finished_by_another_from_the_last_epoch_once(harness: Harness) -> None:
    h = harness
    job_id = _submit_long_job(h)
    with _checkpointed_worker(h, job_id, "doomed") as proc:
        proc.send_signal(signal.SIGKILL)  # a hard death: no hand-back, the lease must expire
        proc.wait(timeout=10)
    killed_at_epoch = h.queue.get(job_id).checkpoint_epoch
    assert h.queue.get(job_id).state == "RUNNING" and not h.registry.versions("resumable")
    with h.running_worker(name="rescuer"):
        job = h.wait_state(job_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=90)
    assert trainer_pb2.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.error
    assert job.attempt == 2 and job.worker == "rescuer" and job.result.epochs_run == 12
    messages = h.messages(job_id)
    resumed = [m for m in messages if m.startswith("resumed from epoch")]
    assert resumed == [f"resumed from epoch {killed_at_epoch}"]
    assert any("lease of a lost worker taken over" in m for m in messages)
    assert h.registry.versions("resumable") == [1]  # published exactly once
    assert h.registry.manifest("resumable", 1).recipe["resumed_from_epoch"] == killed_at_epoch


def test_sigterm_hands_the_job_back_at_once_without_using_an_attempt(harness: Harness) -> None:
    h = harness
    job_id = _submit_long_job(h)
    with _checkpointed_worker(h, job_id, "leaving") as proc:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    record = h.queue.get(job_id)
    assert record.state == "QUEUED" and record.attempt == 0, record
    handed_back_at = time.monotonic()
    with h.running_worker(name="successor"):
        job = h.wait_state(job_id, {"SUCCEEDED", "FAILED"}, timeout=90)
        assert time.monotonic() - handed_back_at < 60
    assert trainer_pb2.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.error
    assert job.attempt == 1
    messages = h.messages(job_id)
    assert any("handed back" in m for m in messages)
    assert sum(m.startswith("resumed from epoch") for m in messages) == 1
    assert h.registry.versions("resumable") == [1]
