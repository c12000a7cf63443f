"""Shared fixtures: a real Redis with a per-test key prefix, temp registry and data roots."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests fork (data loader workers, subprocesses) while gRPC threads run; gRPC's fork handlers then race
# those threads and can crash the test process. The services never fork after starting gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import redis  # noqa: E402

from common.redis_conn import EmbeddedRedis, connect  # noqa: E402

_embedded: EmbeddedRedis | None = None


def _redis_url() -> str:
    """REDIS_URL, else the development Redis on 127.0.0.1:6379, else an embedded one for the session."""
    global _embedded
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        connect(url).close()
        return url
    except redis.RedisError:
        if _embedded is None:
            _embedded = EmbeddedRedis()
            _embedded.start()
        return _embedded.url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _redis_url()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards (the Redis is shared)."""
    prefix = f"zdmtest:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = connect(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    path.mkdir()
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _embedded is not None:
        _embedded.stop()


@pytest.fixture(autouse=True)
def _default_sigchld():
    """Put SIGCHLD back to its default after each test.

    torch's DataLoader installs a Python SIGCHLD handler in the process that runs workers. Left in place,
    every later child exit (subprocess tests, rank processes) delivers a signal to the test process, and
    on this kernel/CPU combination that delivery was seen to crash the process (SIGSEGV, SI_KERNEL) once
    enough native libraries were loaded.
    """
    import signal

    yield
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
