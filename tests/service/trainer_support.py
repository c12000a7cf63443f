"""Helpers for the trainer's service tests: settings on a temp tree, an in-process server, worker threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
import torch

from common.datasets.synthetic import generate_dataset
from common.grpc_server import ServiceBinding, build_server
from common.jobqueue import JobQueue
from common.registry import Registry
from common.settings import CommonSettings, TrainerSettings
from protos.zdm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.trainer.servicer import TrainerServicer
from services.trainer.worker import Worker

ARCH = "test_resnet"
IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parents[2]


def make_settings(tmp: Path, redis_url: str, key_prefix: str, registry_root: Path, *, lease: float = 1.5) -> TrainerSettings:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    common = CommonSettings(redis_url=redis_url, key_prefix=key_prefix, registry=registry_root, data_roots=[data],
                            cache_dir=tmp / "cache")
    return TrainerSettings(port=0, workers=0, lease_seconds=lease, heartbeat_seconds=0.25, retry_backoff_seconds=0.1,
                           max_attempts=3, history_ttl_seconds=600, checkpoint_dir=tmp / "checkpoints", common=common)


def make_dataset(settings: TrainerSettings, name: str = "ds", *, train_per_class: int = 12, test_per_class: int = 4,
                 seed: int = 0) -> Path:
    root = settings.common.data_roots[0] / name
    return generate_dataset(root, train_per_class=train_per_class, test_per_class=test_per_class, size=IMAGE_SIZE,
                            seed=seed)


def job_spec(dataset: Path, *, name: str = "m", epochs: int = 2, batch_size: int = 8, freeze: str = "unfrozen",
             gate: trainer_pb2.QualityGateSpec | None = None, **recipe: object) -> trainer_pb2.JobSpec:
    """A tiny job. The quality gate is off unless ``gate`` is given: a model of one or two epochs on a
    few images tests the plumbing, not quality (tests/service/test_quality_gate.py tests the gate)."""
    modes = {"frozen": common_pb2.FREEZE_MODE_FROZEN, "partial": common_pb2.FREEZE_MODE_PARTIAL,
             "unfrozen": common_pb2.FREEZE_MODE_UNFROZEN}
    return trainer_pb2.JobSpec(
        model_name=name, architecture=ARCH, dataset_path=str(dataset),
        weights=trainer_pb2.WeightsSource(kind=trainer_pb2.WEIGHTS_KIND_RANDOM),
        freeze=common_pb2.FreezePolicy(mode=modes[freeze]),
        recipe=trainer_pb2.Recipe(epochs=epochs, batch_size=batch_size, image_size=IMAGE_SIZE, lr=1e-3,
                                  precision=trainer_pb2.PRECISION_FP32, **recipe),
        gate=gate if gate is not None else trainer_pb2.QualityGateSpec(disabled=True),
    )


def worker_process(settings: TrainerSettings, name: str, *args: str, **env: str) -> subprocess.Popen:
    """``python -m services.trainer.worker --name NAME *args`` on the settings' Redis prefix, registry, data and
    checkpoints (``env`` added to the environment); stdout and stderr together in ``proc.stdout``."""
    common = settings.common
    environ = dict(os.environ, REDIS_URL=common.redis_url, ZDM_KEY_PREFIX=common.key_prefix,
               ZDM_REGISTRY=str(common.registry), ZDM_DATA_ROOTS=json.dumps([str(p) for p in common.data_roots]),
               ZDM_CACHE_DIR=str(common.cache_dir), ZDM_TRAINER_CHECKPOINT_DIR=str(settings.checkpoint_dir),
               ZDM_TRAINER_LEASE_SECONDS=str(settings.lease_seconds),
               ZDM_TRAINER_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", **env)
    return subprocess.Popen([sys.executable, "-m", "services.trainer.worker", "--name", name, *args], cwd=REPO,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass
class Harness:
    settings: TrainerSettings
    client: redis.Redis
    queue: JobQueue
    registry: Registry
    stub: trainer_pb2_grpc.TrainerStub
    address: str = ""  # host:port of the in-process server

    def worker(self, **kwargs: object) -> Worker:
        return Worker(self.settings, self.client, registry=self.registry, progress_interval=0.0, **kwargs)

    @contextmanager
    def running_worker(self, *, burst: bool = True, **kwargs: object) -> Iterator[Worker]:
        """A worker loop in a thread; stopped (and joined) when the block ends."""
        worker = self.worker(**kwargs)
        thread = threading.Thread(target=worker.run, kwargs={"burst": burst, "poll_ms": 100}, daemon=True)
        thread.start()
        try:
            yield worker
        finally:
            worker.request_stop()
            thread.join(timeout=30)
            assert not thread.is_alive(), "worker thread did not stop"

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60.0) -> trainer_pb2.Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id))
            if trainer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_") in states:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {trainer_pb2.JobState.Name(job.state)}"
            time.sleep(0.05)

    def messages(self, job_id: str, timeout: float = 30.0) -> list[str]:
        """The job's message events, as WatchJob streams them (the stream ends with the job)."""
        return [e.message for e in self.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=timeout)
                if e.WhichOneof("event") == "message"]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; two OpenMP threads on a busy 2-core machine spin-wait badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def trainer_harness(settings: TrainerSettings, client: redis.Redis) -> Iterator[Harness]:
    queue = JobQueue(client, settings.common.key_prefix, lease_seconds=settings.lease_seconds,
                     history_ttl_seconds=settings.history_ttl_seconds)
    registry = Registry(settings.common.registry)
    servicer = TrainerServicer(settings, queue, registry)
    server = build_server("127.0.0.1", 0, [ServiceBinding(servicer, trainer_pb2_grpc.add_TrainerServicer_to_server,
                                                          "zdm.v1.Trainer")], grace_seconds=1.0)
    server.set_serving(True)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    with one_torch_thread():
        try:
            yield Harness(settings, client, queue, registry, trainer_pb2_grpc.TrainerStub(channel),
                          f"127.0.0.1:{server.port}")
        finally:
            channel.close()
            server.stop(0)
