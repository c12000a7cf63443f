"""The explainer's health: NOT_SERVING while no model is loaded, SERVING once the default one has loaded."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from services.explainer.__main__ import build
from tests.service.classifier_support import publish, random_state

SERVING = health_pb2.HealthCheckResponse.SERVING


def _status(stub: health_pb2_grpc.HealthStub) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service="zdm.v1.Explainer"), timeout=5).status


def test_not_serving_until_a_model_is_loaded(registry_root) -> None:
    server, _ = build(ExplainerSettings(port=0, common=CommonSettings(registry=registry_root)))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        time.sleep(0.3)  # the readiness thread has looked at the empty registry at least once
        assert _status(health) == health_pb2.HealthCheckResponse.NOT_SERVING
        publish(Registry(registry_root), "m", random_state(0))
        deadline = time.monotonic() + 30
        while _status(health) != SERVING:
            assert time.monotonic() < deadline, "the explainer never reported SERVING after a publish"
            time.sleep(0.1)
    finally:
        channel.close()
        server.stop(0)
    assert not server.server.wait_for_termination(timeout=0)
