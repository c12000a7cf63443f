"""The classifier over real gRPC channels, a real Redis and a temp registry with tiny published models."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2

from common import model_events
from common.manifest import Manifest
from common.models.zoo import build_model
from common.redis_conn import connect
from protos.zdm.v1 import classifier_pb2, common_pb2
from tests.service import classifier_support as cs
from tests.service.trainer_support import one_torch_thread

NAME = "casting"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """2 shared cores: one torch thread trains and serves faster than a fighting pool."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def prefix(redis_url: str) -> Iterator[str]:
    value = f"zdmtest:{uuid.uuid4().hex[:10]}"
    yield value
    cs.delete_prefix(redis_url, value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    data = tmp_path_factory.mktemp("data")
    return cs.train_state(data), data


@pytest.fixture(scope="module")
def ov(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, prefix: str, trained: tuple[dict[str, torch.Tensor], Path]
) -> Iterator[cs.Running]:
    """OpenVINO-served trained model 'casting' version 1."""
    root = tmp_path_factory.mktemp("ov")
    settings = cs.settings_for(root, redis_url, prefix, backend="openvino")
    cs.publish(cs.Registry(settings.common.registry), NAME, trained[0])
    running = cs.Running(settings, redis_url)
    yield running
    running.close()


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[tuple[Path, str]]:
    """A root folder and key prefix for a service started inside the test."""
    yield tmp_path, key_prefix


def _test_images(trained: tuple[dict[str, torch.Tensor], Path]) -> tuple[list[bytes], np.ndarray]:
    return cs.load_split(trained[1], "test")


# -- verdicts -------------------------------------------------------------------------------------
def test_verdict_carries_everything(ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]) -> None:
    images, _ = _test_images(trained)
    v = ov.stub.Classify(cs.request(images[0], request_id="r-1", line_id="L1", part_id="P1"), timeout=30)
    probs = {p.class_name: p.probability for p in v.probabilities}
    assert list(probs) == ["def_front", "ok_front"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert v.predicted_class == max(probs, key=probs.get)
    assert v.defect_probability == pytest.approx(probs["def_front"])
    assert v.threshold == pytest.approx(0.5)
    assert v.defective == (v.defect_probability >= v.threshold)
    assert (v.model.name, v.model.version) == (NAME, 1)
    assert v.backend.startswith("openvino")
    assert v.image_sha256 == hashlib.sha256(images[0]).hexdigest()
    assert v.request_id == "r-1"
    assert v.timing.total_ms >= v.timing.decode_ms > 0 and v.timing.inference_ms > 0
    assert not v.HasField("error")
    assert ov.stub.Classify(cs.request(images[0])).image_sha256 == v.image_sha256  # a call without a deadline


def test_batch_and_single_agree(ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]) -> None:
    images, _ = _test_images(trained)
    picked = images[::37][:6]
    batch = ov.stub.ClassifyBatch(
        classifier_pb2.ClassifyBatchRequest(images=[common_pb2.Image(data=b, name=f"img{i}") for i, b in enumerate(picked)]),
        timeout=30,
    )
    assert len(batch.verdicts) == len(picked)
    for data, bv in zip(picked, batch.verdicts, strict=True):
        sv = ov.stub.Classify(cs.request(data), timeout=30)
        assert bv.image_sha256 == sv.image_sha256
        assert bv.predicted_class == sv.predicted_class
        assert bv.defect_probability == pytest.approx(sv.defect_probability, abs=0.02)  # bf16, other batch shape


def test_served_backend_agrees_with_torch_fp32(ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]) -> None:
    images, labels = _test_images(trained)
    model = build_model(cs.ARCH, 2, pretrained=False, image_size=cs.IMAGE_SIZE)
    model.load_state_dict(trained[0])
    model.eval()
    with torch.inference_mode():
        reference = model(torch.from_numpy(cs.tensors(images))).argmax(1).numpy()
    served = []
    for start in range(0, len(images), 50):
        chunk = images[start : start + 50]
        response = ov.stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(images=[common_pb2.Image(data=b) for b in chunk]), timeout=60
        )
        served += [["def_front", "ok_front"].index(v.predicted_class) for v in response.verdicts]
    agreement = float(np.mean(np.array(served) == reference))
    assert len(images) >= 200
    assert len(set(reference)) == 2 and np.mean(reference == labels) > 0.6  # a real model, not a constant
    assert agreement >= 0.995, f"served {ov.app.store.loaded()[0].backend.name} agrees on {agreement:.3%}"


def test_bad_image_in_a_batch_fails_the_call_naming_it(
    ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]
) -> None:
    images, _ = _test_images(trained)
    with pytest.raises(grpc.RpcError) as err:
        ov.stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(
                images=[common_pb2.Image(data=images[0]), common_pb2.Image(data=b"not an image", name="cam7.png")]
            ),
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1]" in err.value.details() and "cam7.png" in err.value.details()


def test_stream_answers_in_order_with_per_item_errors(ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]) -> None:
    images, _ = _test_images(trained)
    requests = []
    for i in range(12):
        if i == 3:
            requests.append(cs.request(b"\x00" * 10, request_id=f"s{i}"))
        elif i == 7:
            requests.append(cs.request(images[i], request_id=f"s{i}", model=common_pb2.ModelRef(name="nope")))
        else:
            requests.append(cs.request(images[i], request_id=f"s{i}", part_id=f"sp{i}"))
    verdicts = list(ov.stub.ClassifyStream(iter(requests), timeout=60))
    assert [v.request_id for v in verdicts] == [f"s{i}" for i in range(12)]
    assert verdicts[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert verdicts[7].error.code == grpc.StatusCode.NOT_FOUND.value[0] and "nope" in verdicts[7].error.message
    for i, v in enumerate(verdicts):
        if i not in (3, 7):
            assert not v.HasField("error") and v.image_sha256 == hashlib.sha256(images[i]).hexdigest()


def test_stream_with_a_small_window_still_delivers_everything(
    ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]
) -> None:
    images, _ = _test_images(trained)
    ov.app.settings.stream_window = 2  # read per stream call
    try:
        verdicts = list(
            ov.stub.ClassifyStream(iter(cs.request(b, request_id=str(i)) for i, b in enumerate(images[:20])), timeout=60)
        )
    finally:
        ov.app.settings.stream_window = 64
    assert [v.request_id for v in verdicts] == [str(i) for i in range(20)]


# -- thresholds and audit -------------------------------------------------------------------------
def test_threshold_changes_the_decision_and_persists(
    ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path], fresh: tuple[Path, str], redis_url: str, prefix: str
) -> None:
    images, _ = _test_images(trained)
    p = ov.stub.Classify(cs.request(images[0]), timeout=30).defect_probability
    low, high = p / 2, (1 + p) / 2
    try:
        served = ov.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name=NAME, threshold=low), timeout=30)
        assert served.threshold == pytest.approx(low) and served.info.name == NAME
        v = ov.stub.Classify(cs.request(images[0]), timeout=30)
        assert v.defective and v.threshold == pytest.approx(low)
        ov.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name=NAME, threshold=high), timeout=30)
        assert not ov.stub.Classify(cs.request(images[0]), timeout=30).defective
        with pytest.raises(grpc.RpcError) as err:
            ov.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name=NAME, threshold=1.5), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            ov.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name="nope", threshold=0.2), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        # A second replica (torch backend, its own registry copy of the model) reads the same threshold.
        root, _ = fresh
        settings = cs.settings_for(root, redis_url, prefix)
        cs.publish(cs.Registry(settings.common.registry), NAME, trained[0])
        replica = cs.Running(settings, redis_url)
        try:
            v2 = replica.stub.Classify(cs.request(images[0]), timeout=30)
            assert v2.threshold == pytest.approx(high) and not v2.defective
            assert v2.backend.startswith("torch")
        finally:
            replica.close()
    finally:
        ov.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name=NAME, threshold=0.5), timeout=30)


def test_audit_is_queryable_by_part(ov: cs.Running, trained: tuple[dict[str, torch.Tensor], Path]) -> None:
    images, _ = _test_images(trained)
    part = f"part-{uuid.uuid4().hex[:6]}"
    first = ov.stub.Classify(cs.request(images[1], part_id=part, line_id="line-2"), timeout=30)
    ov.stub.ClassifyBatch(
        classifier_pb2.ClassifyBatchRequest(
            images=[common_pb2.Image(data=images[2]), common_pb2.Image(data=images[3])],
            line_id="line-2",
            part_ids=[part, "someone-else"],
        ),
        timeout=30,
    )
    records = ov.stub.QueryAudit(classifier_pb2.AuditQuery(part_id=part), timeout=30).records
    assert [r.image_sha256 for r in records] == [hashlib.sha256(images[i]).hexdigest() for i in (2, 1)]
    newest, oldest = records
    assert oldest.defective == first.defective and oldest.threshold == pytest.approx(first.threshold)
    assert (oldest.model.name, oldest.model.version) == (NAME, 1)
    assert oldest.line_id == "line-2" and oldest.part_id == part
    assert {p.class_name: p.probability for p in oldest.probabilities}["def_front"] == pytest.approx(
        first.defect_probability
    )
    assert newest.timestamp >= oldest.timestamp > time.time() - 60
    assert len(ov.stub.QueryAudit(classifier_pb2.AuditQuery(part_id=part, limit=1), timeout=30).records) == 1
    anyone = ov.stub.QueryAudit(classifier_pb2.AuditQuery(limit=2), timeout=30).records
    assert anyone[0].part_id == "someone-else"
    assert ov.app.audit.dropped == 0


# -- model store over gRPC ------------------------------------------------------------------------
def test_aliases_pinning_and_unknown_models(fresh: tuple[Path, str], redis_url: str) -> None:
    root, key_prefix = fresh
    settings = cs.settings_for(root, redis_url, key_prefix)
    registry = cs.Registry(settings.common.registry)
    cs.publish(registry, "other", cs.random_state(1), aliases=["production"])
    cs.publish(registry, "other", cs.random_state(2))
    cs.publish(registry, "other", cs.random_state(3), aliases=["staging"])
    running = cs.Running(settings, redis_url)
    data = cs.png(np.full((40, 50), 128, np.uint8))
    try:

        def served(**ref: object) -> int:
            return running.stub.Classify(cs.request(data, model=common_pb2.ModelRef(**ref)), timeout=30).model.version

        assert served() == 1  # default model = the newest published name; its production alias
        assert served(name="other") == 1
        assert served(name="other", version=2) == 2
        assert served(name="other", alias="staging") == 3
        info = running.stub.GetModelInfo(
            classifier_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name="other", version=3)), timeout=30
        )
        assert info.info.aliases == ["staging"] and info.info.classes == ["def_front", "ok_front"]
        assert info.info.preprocessing.image_size == cs.IMAGE_SIZE and info.backend.startswith("torch")
        assert Manifest.model_validate_json(info.info.manifest_json).version == 3
        for ref in ({"name": "nope"}, {"name": "other", "version": 9}, {"name": "other", "alias": "canary"}):
            with pytest.raises(grpc.RpcError) as err:
                served(**ref)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, ref
        loaded = {(m.manifest.name, m.manifest.version) for m in running.app.store.loaded()}
        assert loaded == {("other", 1), ("other", 2), ("other", 3)}
    finally:
        running.close()


def test_no_model_is_unavailable_until_one_is_announced(fresh: tuple[Path, str], redis_url: str) -> None:
    root, key_prefix = fresh
    settings = cs.settings_for(root, redis_url, key_prefix)  # registry poll every 300 s: the event must do it
    running = cs.Running(settings, redis_url, wait=False)
    data = cs.png(np.zeros((32, 32), np.uint8))
    try:
        assert running.health_status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Classify(cs.request(data), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.5)  # let the listener subscribe
        manifest = cs.publish(running.registry, "late", cs.random_state(4))
        model_events.announce(connect(redis_url), key_prefix, manifest.name, manifest.version)
        assert running.app.store.wait_ready(60)
        assert running.health_status() == health_pb2.HealthCheckResponse.SERVING
        assert running.stub.Classify(cs.request(data), timeout=30).model.name == "late"
    finally:
        running.close()


def test_hot_reload_under_load_loses_no_request(fresh: tuple[Path, str], redis_url: str) -> None:
    root, key_prefix = fresh
    settings = cs.settings_for(root, redis_url, key_prefix)
    cs.publish(cs.Registry(settings.common.registry), NAME, cs.random_state(5))
    running = cs.Running(settings, redis_url)
    data = cs.png(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8))
    versions: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                versions.append(running.stub.Classify(cs.request(data), timeout=30).model.version)
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        manifest = cs.publish(running.registry, NAME, cs.random_state(6))
        model_events.announce(connect(redis_url), key_prefix, NAME, manifest.version)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not failures, failures[:3]
        assert versions[0] == 1 and versions[-1] == 2
        first_new = versions.index(2)
        assert 1 not in versions[first_new + len(threads) :]  # after the swap only calls already in flight finish on v1
        assert [m.manifest.version for m in running.app.store.loaded()] == [2]  # v1 unloaded once drained
    finally:
        running.close()


class _GatedBackend:
    """A backend that counts images and blocks while its gate is closed."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.images = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.images += batch.shape[0]
        return np.tile(np.array([[0.0, 1.0]], np.float32), (batch.shape[0], 1))


def test_expired_deadline_is_not_computed(fresh: tuple[Path, str], redis_url: str) -> None:
    root, key_prefix = fresh
    settings = cs.settings_for(root, redis_url, key_prefix, max_queue_delay_ms=0)
    cs.publish(cs.Registry(settings.common.registry), NAME, cs.random_state(7))
    backend = _GatedBackend()
    running = cs.Running(settings, redis_url, factory=lambda _m: backend)
    data = cs.png(np.zeros((32, 32), np.uint8))
    try:
        warm = backend.images
        backend.gate.clear()
        backend.entered.clear()
        blocker = running.stub.Classify.future(cs.request(data), timeout=30)
        assert backend.entered.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Classify(cs.request(data), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        backend.gate.set()
        assert blocker.result(30).model.version == 1
        ok = running.stub.Classify(cs.request(data), timeout=30)
        assert ok.predicted_class == "ok_front"
        assert backend.images - warm == 2  # the blocker and the last call; the expired one never ran
        assert running.app.metrics.dropped.labels("deadline")._value.get() == 1
    finally:
        backend.gate.set()
        running.close()
