"""The services as plain processes (the containers' commands): health, reflection, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client.stack import SERVICE_NAMES, SERVICES, Stack, free_port
from tests.e2e.zdm_up_support import start_zdm_up, wait_until_up


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        return {s.name for s in reply.list_services_response.service}


def test_stack_processes_serve_reflect_and_stop(tmp_path, redis_url, key_prefix) -> None:
    lines: list[str] = []
    stack = Stack(home=tmp_path / "home", redis_url=redis_url, ports={s: free_port() for s in SERVICES},
                  extra_env={"ZDM_KEY_PREFIX": key_prefix}, log=lines.append)
    stack.start(timeout=90)
    try:
        pids = [p.pid for p in stack._procs.values()]
        for service in SERVICES:
            address = f"127.0.0.1:{stack.ports[service]}"
            assert SERVICE_NAMES[service] in _services(address)
            assert "grpc.health.v1.Health" in _services(address)
        assert _health(stack.endpoints.trainer, "zdm.v1.Trainer") == health_pb2.HealthCheckResponse.SERVING
        # no model published yet: the classifier and the explainer are up but not ready
        assert _health(stack.endpoints.classifier, "zdm.v1.Classifier") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(stack.endpoints.explainer, "zdm.v1.Explainer") == health_pb2.HealthCheckResponse.NOT_SERVING
        # the classifier's port also serves the Open Inference Protocol
        assert "inference.GRPCInferenceService" in _services(stack.endpoints.classifier)
    finally:
        stack.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any("[trainer" in line for line in lines)


def test_zdm_up_ctrl_c_leaves_no_process(tmp_path, redis_url, key_prefix) -> None:
    env = dict(os.environ, REDIS_URL=redis_url, ZDM_KEY_PREFIX=key_prefix, ZDM_HOME=str(tmp_path / "home"),
               ZDM_TRAINER_PORT=str(free_port()), ZDM_CLASSIFIER_PORT=str(free_port()),
               ZDM_EXPLAINER_PORT=str(free_port()))
    proc = start_zdm_up(["--home", str(tmp_path / "home")], env)
    try:
        seen = wait_until_up(proc)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 3, seen
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped." in out
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid), 0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
