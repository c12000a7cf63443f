"""Limits and confinement over real gRPC: caps, id lengths, model names, answer bounds, verified weights."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.manifest import WEIGHTS_FILE
from common.redis_conn import connect
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from protos.zdm.v1 import classifier_pb2, common_pb2, explainer_pb2, explainer_pb2_grpc, trainer_pb2
from services.explainer.__main__ import build
from tests.service import classifier_support as cs
from tests.service import trainer_support as ts
from tests.unit.test_input_limits import png_header

ESCAPING_NAMES = ["/abs/path/model", "../../x", ".."]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[cs.Running]:
    root: Path = tmp_path_factory.mktemp("limits")
    prefix = f"zdmtest:limits-{uuid.uuid4().hex[:8]}"
    settings = cs.settings_for(root, redis_url, prefix, max_batch_images=4, max_id_length=64)
    cs.publish(cs.Registry(settings.common.registry), "casting", cs.random_state(0))
    running = cs.Running(settings, redis_url)
    yield running
    running.close()
    cs.delete_prefix(redis_url, prefix)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


IMAGE = cs.png(np.full((32, 32), 100, np.uint8))


def test_classify_batch_has_a_count_cap(classifier: cs.Running) -> None:
    ok = classifier_pb2.ClassifyBatchRequest(images=[common_pb2.Image(data=IMAGE)] * 4)
    assert len(classifier.stub.ClassifyBatch(ok, timeout=30).verdicts) == 4
    too_many = classifier_pb2.ClassifyBatchRequest(images=[common_pb2.Image(data=IMAGE)] * 5)
    with pytest.raises(grpc.RpcError) as err:
        classifier.stub.ClassifyBatch(too_many, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit 4" in err.value.details()


def test_id_fields_are_length_checked_before_they_reach_redis(classifier: cs.Running, redis_url: str) -> None:
    long_id = "p" * (1 << 20)  # the finding: a 1 MiB part_id became a 1 MiB Redis key
    for field in ("part_id", "line_id", "request_id"):
        code = _code(lambda f=field: classifier.stub.Classify(cs.request(IMAGE, **{f: long_id}), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
    batch = classifier_pb2.ClassifyBatchRequest(images=[common_pb2.Image(data=IMAGE)], part_ids=[long_id])
    assert _code(lambda: classifier.stub.ClassifyBatch(batch, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    audit = classifier_pb2.AuditQuery(part_id=long_id)
    assert _code(lambda: classifier.stub.QueryAudit(audit, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    verdicts = list(classifier.stub.ClassifyStream(iter([cs.request(IMAGE, part_id=long_id, request_id="a"),
                                                         cs.request(IMAGE, request_id="b")]), timeout=30))
    assert verdicts[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not verdicts[1].HasField("error")
    classifier.app.audit.flush(timeout=5)
    prefix = classifier.app.settings.common.key_prefix
    keys = list(connect(redis_url).scan_iter(match=f"{prefix}:*", count=1000))
    assert keys and max(len(k) for k in keys) < 1000


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_classifier_refuses_model_names_that_leave_the_registry(classifier: cs.Running, name: str) -> None:
    ref = common_pb2.ModelRef(name=name)
    info = classifier_pb2.GetModelInfoRequest(model=ref)
    assert _code(lambda: classifier.stub.GetModelInfo(info, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: classifier.stub.Classify(cs.request(IMAGE, model=ref), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    pinned = common_pb2.ModelRef(name=name, version=1)
    assert _code(lambda: classifier.stub.Classify(cs.request(IMAGE, model=pinned), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_a_truncated_new_version_is_refused_and_the_previous_keeps_serving(tmp_path: Path, redis_url: str,
                                                                          key_prefix: str) -> None:
    settings = cs.settings_for(tmp_path, redis_url, key_prefix)
    registry = cs.Registry(settings.common.registry)
    cs.publish(registry, "casting", cs.random_state(1))
    running = cs.Running(settings, redis_url)
    try:
        assert running.stub.Classify(cs.request(IMAGE), timeout=30).model.version == 1
        v2 = cs.publish(registry, "casting", cs.random_state(2))
        weights = registry.path("casting", v2.version) / WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
        running.app.store.refresh()
        assert running.stub.Classify(cs.request(IMAGE), timeout=30).model.version == 1
        pinned = common_pb2.ModelRef(name="casting", version=2)
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Classify(cs.request(IMAGE, model=pinned), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "SHA-256" in err.value.details()
        v3 = cs.publish(registry, "casting", cs.random_state(3))  # a good version is taken up as usual
        running.app.store.refresh()
        assert running.stub.Classify(cs.request(IMAGE), timeout=30).model.version == v3.version
    finally:
        running.close()


# -- explainer -----------------------------------------------------------------------------------------

@pytest.fixture
def explainer(registry_root: Path) -> Iterator[tuple[explainer_pb2_grpc.ExplainerStub, Registry]]:
    settings = ExplainerSettings(port=0, max_message_bytes=1 << 20, common=CommonSettings(registry=registry_root))
    server, _ = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    registry = Registry(registry_root)
    cs.publish(registry, "m", cs.random_state(0))
    yield explainer_pb2_grpc.ExplainerStub(channel), registry
    channel.close()
    server.stop(0)


def test_an_answer_that_would_exceed_the_message_limit_is_refused_before_work(explainer) -> None:
    stub, _ = explainer
    small = cs.png(np.full((200, 200), 90, np.uint8))
    assert stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=small)), timeout=60).heatmap.width == 200
    # 600 x 600 x 3 bytes per pixel > 1 MiB; the image data is a stub: refused from the header, never decoded.
    big = png_header(600, 600, 0)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=big)), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "message limit" in err.value.details()
    assert time.perf_counter() - started < 10
    with_png = cs.png(np.full((400, 400), 90, np.uint8))  # fits bare (545 KB), not with both PNGs (1.19 MB)
    assert stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=with_png)), timeout=60).heatmap.width
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=with_png), want_png=True), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "want_png" in err.value.details()


def test_mask_bombs_and_box_floods_are_invalid_argument(explainer) -> None:
    stub, _ = explainer
    image = common_pb2.Image(data=cs.png(np.full((64, 64), 90, np.uint8)))
    masks = {
        "20000x20000 PNG mask": common_pb2.Mask(data=png_header(20000, 20000, 0)),
        "too many YOLO lines": common_pb2.Mask(data=b"0 0.5 0.5 0.1 0.1\n" * 10_001),
        "too many boxes": common_pb2.Mask(boxes=[common_pb2.Box(x0=0, y0=0, x1=8, y1=8)] * 10_001),
    }
    for label, mask in masks.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(explainer_pb2.ExplainRequest(image=image, mask=mask), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert "limit" in err.value.details(), label


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_explainer_refuses_model_names_that_leave_the_registry(explainer, name: str) -> None:
    stub, _ = explainer
    request = explainer_pb2.ExplainRequest(image=common_pb2.Image(data=cs.png(np.zeros((32, 32), np.uint8))),
                                           model=common_pb2.ModelRef(name=name))
    assert _code(lambda: stub.Explain(request, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT


# -- trainer ---------------------------------------------------------------------------------------------

def test_set_alias_and_get_model_stay_inside_the_registry(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    settings = ts.make_settings(tmp_path, redis_url, key_prefix, tmp_path / "registry")
    outside = Registry(tmp_path / "elsewhere")
    cs.publish(outside, "x", cs.random_state(0))
    with ts.trainer_harness(settings, connect(redis_url)) as h:
        for name in ("../elsewhere/x", str(tmp_path / "elsewhere" / "x")):
            alias = trainer_pb2.SetAliasRequest(name=name, alias="production", version=1)
            assert _code(lambda a=alias: h.stub.SetAlias(a, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
            get = trainer_pb2.GetModelRequest(model=common_pb2.ModelRef(name=name))
            assert _code(lambda g=get: h.stub.GetModel(g, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not (tmp_path / "elsewhere" / "x" / "aliases.json").exists()
    assert not (tmp_path / "elsewhere" / "x" / ".lock").exists()


def test_explainer_refuses_a_corrupt_new_version_and_keeps_explaining_with_the_previous(explainer) -> None:
    stub, registry = explainer
    request = explainer_pb2.ExplainRequest(image=common_pb2.Image(data=cs.png(np.full((32, 32), 80, np.uint8))))
    assert stub.Explain(request, timeout=60).model.version == 1
    v2 = cs.publish(registry, "m", cs.random_state(5))
    weights = registry.path("m", v2.version) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    assert stub.Explain(request, timeout=60).model.version == 1  # the previous version keeps serving
    pinned = explainer_pb2.ExplainRequest(image=request.image, model=common_pb2.ModelRef(name="m", version=2))
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(pinned, timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "SHA-256" in err.value.details()
