"""Explainer over a real gRPC channel: heatmaps, masks, scores and clear errors."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from common.datasets.synthetic import generate_dataset
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from protos.zdm.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc
from services.explainer.__main__ import build
from tests.service.classifier_support import publish, random_state


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn"), train_per_class=2, test_per_class=3, size=64, seed=3)


@pytest.fixture
def stub(registry_root):
    settings = ExplainerSettings(port=0, common=CommonSettings(registry=registry_root))
    server, _ = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield explainer_pb2_grpc.ExplainerStub(channel), Registry(registry_root)
    channel.close()
    server.stop(0)


def _defect(data):
    image = sorted((data / "test" / "def_front").glob("*.png"))[0]
    mask = data / "masks" / "test" / "def_front" / image.name
    return image.read_bytes(), mask.read_bytes()


def test_explain_returns_heatmap_mask_and_scores(stub, data) -> None:
    explainer, registry = stub
    publish(registry, "m", random_state(0))
    image, mask = _defect(data)
    request = explainer_pb2.ExplainRequest(
        image=common_pb2.Image(data=image), want_png=True, threshold=0.3,
        mask=common_pb2.Mask(data=mask, format=common_pb2.MASK_FORMAT_BINARY_PNG))
    reply = explainer.Explain(request)
    assert (reply.heatmap.width, reply.heatmap.height) == (64, 64)
    heat = np.frombuffer(reply.heatmap.float16_data, dtype="<f2").reshape(64, 64)
    assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.99  # normalised by max
    pred = np.frombuffer(reply.mask, dtype=np.uint8).reshape(64, 64).astype(bool)
    assert np.count_nonzero(pred != (heat.astype(np.float32) > 0.3)) <= 3  # float16 rounding at the threshold
    gt = cv2.imdecode(np.frombuffer(mask, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
    inter, union = (pred & gt).sum(), (pred | gt).sum()
    assert reply.scores.iou == pytest.approx(inter / union, abs=1e-6)
    assert reply.scores.iogt == pytest.approx(inter / gt.sum(), abs=1e-6)
    assert reply.model.name == "m" and reply.model.version == 1 and reply.layer
    assert reply.predicted_class in {"def_front", "ok_front"} and 0.5 <= reply.probability <= 1.0
    overlay = cv2.imdecode(np.frombuffer(reply.overlay_png, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (64, 64, 3)


@pytest.mark.parametrize("method", [explainer_pb2.METHOD_GRADCAM_PLUS_PLUS, explainer_pb2.METHOD_EIGENCAM])
def test_other_methods_and_target_class(stub, data, method) -> None:
    explainer, registry = stub
    publish(registry, "m", random_state(0))
    image, _ = _defect(data)
    reply = explainer.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), method=method,
                                                           target_class="ok_front"))
    assert reply.method == method and reply.explained_class == "ok_front"


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_errors_have_the_right_status(stub, data) -> None:
    explainer, registry = stub
    image, _ = _defect(data)
    code, _ = _code(lambda: explainer.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image))))
    assert code == grpc.StatusCode.UNAVAILABLE  # nothing published yet
    publish(registry, "m", random_state(0))
    cases = [
        (explainer_pb2.ExplainRequest(), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=b"\x00garbage")),
         grpc.StatusCode.INVALID_ARGUMENT, ""),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), layer="no.such.layer"),
         grpc.StatusCode.INVALID_ARGUMENT, "layer"),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), method=explainer_pb2.METHOD_ATTENTION),
         grpc.StatusCode.INVALID_ARGUMENT, "attention"),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image),
                                      mask=common_pb2.Mask(data=cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1]
                                                           .tobytes())),
         grpc.StatusCode.INVALID_ARGUMENT, "no defect"),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=common_pb2.ModelRef(name="ghost")),
         grpc.StatusCode.NOT_FOUND, "ghost"),
        (explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), target_class="nope"),
         grpc.StatusCode.INVALID_ARGUMENT, "class"),
    ]
    for request, expected, words in cases:
        code, details = _code(lambda request=request: explainer.Explain(request))
        assert code == expected, (request, details)
        assert words in details
    # still answering after all that
    assert explainer.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image))).heatmap.width == 64


def test_peak_region_is_the_component_of_the_maximum(stub, data) -> None:
    explainer, registry = stub
    publish(registry, "m", random_state(0))
    image, _ = _defect(data)

    def explain(region: str):
        reply = explainer.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), threshold=0.3,
                                                               region=region))
        return reply, np.frombuffer(reply.mask, dtype=np.uint8).reshape(64, 64).astype(bool)

    everything_reply, everything = explain("")
    peak_reply, peak = explain("peak")
    assert (everything_reply.region, peak_reply.region) == ("all", "peak")  # empty = the manifest default ("all")
    heat = np.frombuffer(peak_reply.heatmap.float16_data, dtype="<f2").reshape(64, 64)
    count, labels = cv2.connectedComponents(peak.astype(np.uint8), connectivity=8)
    assert count == 2  # background + one region
    assert peak[np.unravel_index(int(np.argmax(heat)), heat.shape)]
    assert peak.any() and not (peak & ~everything).any()  # a subset of "all" at the same threshold
    # a stored default region applies when the request leaves it empty
    manifest = registry.manifest("m", 1)
    registry.update_explanation("m", 1, manifest.explanation.model_copy(update={"region": "peak"}))
    assert explain("")[0].region == "peak"
    code, details = _code(lambda: explain("largest"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "peak" in details
