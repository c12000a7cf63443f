"""common.healthcheck against a real in-process server built with common.grpc_server.build_server."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import healthcheck
from common.grpc_server import RunningServer, ServiceBinding, build_server
from protos.zdm.v1 import classifier_pb2_grpc, trainer_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "zdm.v1.Classifier"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    binding = ServiceBinding(classifier_pb2_grpc.ClassifierServicer(),
                             classifier_pb2_grpc.add_ClassifierServicer_to_server, SERVICE)
    running = build_server("127.0.0.1", 0, [binding])
    yield running
    running.stop(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exit_code_follows_serving_state(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{server.port}"
    assert healthcheck.main([target, SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    server.set_serving(True)
    assert healthcheck.main([target, SERVICE]) == 0
    assert healthcheck.main([target]) == 0  # "" = the whole server
    assert "SERVING" in capsys.readouterr().out
    server.set_serving(False)
    assert healthcheck.main([target, SERVICE]) == 1


def test_unknown_service_is_unhealthy(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.set_serving(True)
    assert healthcheck.main([f"127.0.0.1:{server.port}", "zdm.v1.NoSuchService"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_nothing_listening_is_unhealthy_and_fast(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main([f"127.0.0.1:{_free_port()}", SERVICE, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


@pytest.mark.parametrize("argv", [[], ["no-port"], ["host:notaport"], ["host:70000"], [":50051"]])
def test_bad_command_line_exits_1_not_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Docker reserves healthcheck exit code 2; argparse would use it for usage errors.
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(argv)
    assert exc.value.code == 1
    assert "error" in capsys.readouterr().err


def test_runs_as_module_without_torch(server: RunningServer) -> None:
    """The exact command compose runs: `python -m common.healthcheck HOST:PORT SERVICE`, and it stays light."""
    server.set_serving(True)
    cmd = [sys.executable, "-m", "common.healthcheck", f"127.0.0.1:{server.port}", SERVICE]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{SERVICE}: SERVING" in done.stdout
    server.set_serving(False)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "NOT_SERVING" in done.stderr
    probe = "import sys, common.healthcheck; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_probe_speaks_mutual_tls_with_the_services_own_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a container the probe presents the service's certificate (server + client usage) to its own port."""
    from common.settings import SecuritySettings
    from tests.tls_support import make_pki

    pki = make_pki(tmp_path)
    running = build_server("127.0.0.1", 0, [ServiceBinding(trainer_pb2_grpc.TrainerServicer(),
                                                           trainer_pb2_grpc.add_TrainerServicer_to_server,
                                                           "zdm.v1.Trainer")],
                           security=SecuritySettings(tls_cert=pki.server.cert, tls_key=pki.server.key, tls_ca=pki.ca))
    try:
        target = f"127.0.0.1:{running.port}"
        assert healthcheck.main([target, "zdm.v1.Trainer"]) == 1, "plain text against a TLS port"
        monkeypatch.setenv("ZDM_TLS_CA", str(pki.ca))
        assert healthcheck.main([target, "zdm.v1.Trainer"]) == 1, "no client certificate under mutual TLS"
        monkeypatch.setenv("ZDM_TLS_CERT", str(pki.server.cert))
        monkeypatch.setenv("ZDM_TLS_KEY", str(pki.server.key))
        assert healthcheck.main([target, "zdm.v1.Trainer"]) == 1 and "NOT_SERVING" in capsys.readouterr().err
        assert healthcheck.main([target, "zdm.v1.Trainer", "--any-status"]) == 0, "liveness: any answer will do"
        running.set_serving(True)
        assert healthcheck.main([target, "zdm.v1.Trainer"]) == 0
    finally:
        running.stop(0)
