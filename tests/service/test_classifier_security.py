"""The real classifier with a tokens file: roles on its RPCs, the audit names the caller, idle streams
cannot starve Classify or health."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tests.service.classifier_support as cs
from client.sdk import ClassifierClient, Credentials
from common.settings import SecuritySettings
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from tests.unit.test_auth import TOKENS, bearer, write_tokens

MAX_WORKERS = 4
MAX_STREAMS = 24


@pytest.fixture
def classifier(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[cs.Running]:
    security = SecuritySettings(auth_tokens_file=write_tokens(tmp_path / "tokens.yaml"))
    settings = cs.settings_for(tmp_path, redis_url, key_prefix, security=security, max_workers=MAX_WORKERS,
                               max_streams=MAX_STREAMS)
    cs.publish(cs.Registry(settings.common.registry), "sec", cs.random_state(0), aliases=["production"])
    running = cs.Running(settings, redis_url)
    yield running
    running.close()


def _image() -> bytes:
    rng = np.random.default_rng(0)
    return cs.png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_roles_on_the_classifier_and_the_audit_names_the_caller(classifier: cs.Running) -> None:
    stub = classifier.stub
    req = cs.request(_image(), part_id="p-1", line_id="L3")
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(req)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    line = ClassifierClient(f"127.0.0.1:{classifier.app.port}", Credentials(token=TOKENS["line-3"][1]))
    try:
        line.classify(req.image, part_id="p-1", line_id="L3")
        with pytest.raises(grpc.RpcError) as err:
            line.set_threshold("sec", 0.99)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            line.stub.QueryAudit(classifier_pb2.AuditQuery(part_id="p-1"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        line.close()
    served = stub.SetThreshold(classifier_pb2.SetThresholdRequest(name="sec", threshold=0.99), metadata=bearer("root"))
    assert served.threshold == pytest.approx(0.99)
    records = stub.QueryAudit(classifier_pb2.AuditQuery(part_id="p-1"), metadata=bearer("qa")).records
    assert [r.caller for r in records] == ["line-3"]


def test_idle_streams_beyond_the_pool_leave_classify_and_health_answering(classifier: cs.Running) -> None:
    target = f"127.0.0.1:{classifier.app.port}"
    stop = threading.Event()

    def silent() -> Iterator[classifier_pb2.ClassifyRequest]:
        stop.wait()
        yield from ()

    holders = [grpc.insecure_channel(target) for _ in range(2)]
    streams = []
    try:
        for i in range(MAX_STREAMS):  # more than the unary threads (4) and than the old pool (16)
            channel = holders[i % 2]
            if i % 3:
                streams.append(classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(silent(),
                                                                                          metadata=bearer("line-3")))
            else:
                streams.append(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()))
        deadline = time.monotonic() + 10
        while classifier.app.server is not None and time.monotonic() < deadline:
            if sum(not s.done() for s in streams) == MAX_STREAMS:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # every stream reached its handler
        image = common_pb2.Image(data=_image())
        for _ in range(5):
            start = time.perf_counter()
            classifier.stub.Classify(classifier_pb2.ClassifyRequest(image=image), metadata=bearer("line-3"), timeout=5)
            assert classifier.health_status() == health_pb2.HealthCheckResponse.SERVING
            assert time.perf_counter() - start < 2.0
        # One stream more than the cap is refused, and says why.
        extra = classifier_pb2_grpc.ClassifierStub(holders[0]).ClassifyStream(silent(), metadata=bearer("line-3"))
        with pytest.raises(grpc.RpcError) as err:
            next(extra)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams already open" in err.value.details()
        assert all(not s.done() for s in streams), "the held streams stay open"
    finally:
        stop.set()
        for s in streams:
            s.cancel()
        for channel in holders:
            channel.close()
