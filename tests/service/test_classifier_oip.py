"""Open Inference Protocol v2 on the classifier, driven by the real tritonclient against a live service.

The classifier runs in this process (port 0, real Redis, a temp registry with tiny models); the Triton
client runs in its own interpreter (tests/service/oip_tritonclient.py), since tritonclient brings its
own definition of the ``inference`` protobuf package. Verdicts are compared with zdm.v1 Classify's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
import torch

from common.datasets.synthetic import generate_dataset
from protos.inference import open_inference_pb2 as oip
from protos.inference import open_inference_pb2_grpc as oip_grpc
from protos.zdm.v1 import classifier_pb2
from tests.service import classifier_support as cs

NAME = "casting"
CLIENT = Path(__file__).with_name("oip_tritonclient.py")
OUTPUTS = ["probabilities", "defect_probability", "defective", "threshold", "predicted_class"]
ROOT = Path(__file__).resolve().parents[2]
# Real casting photographs (read in place) join the synthetic files when the data is there.
CASTING_TEST = Path(os.environ.get("ZDM_CASTING_TEST", ROOT.parent / "shared" / "data" / "casting" / "test"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[cs.Running, Path]]:
    """Versions 1 and 2 of 'casting' (2 = alias production) and real PNG / JPEG files on disk."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("oip")
    prefix = f"zdmtest:{uuid.uuid4().hex[:10]}"
    settings = cs.settings_for(root, redis_url, prefix)
    registry = cs.Registry(settings.common.registry)
    cs.publish(registry, NAME, cs.random_state(1))
    cs.publish(registry, NAME, cs.random_state(2), aliases=["production"])
    generate_dataset(root / "data", train_per_class=1, test_per_class=2, size=cs.IMAGE_SIZE, seed=3)
    files = sorted((root / "data" / "test").glob("*/*.png"))
    jpeg = root / "part.jpg"
    jpeg.write_bytes(cs.jpeg(cv2.imread(str(files[0]))))
    running = cs.Running(settings, redis_url)
    yield running, root
    running.close()
    cs.delete_prefix(redis_url, prefix)


def _image_files(root: Path) -> list[Path]:
    casting = [p for cls in ("def_front", "ok_front") for p in sorted((CASTING_TEST / cls).glob("*.jpeg"))[:1]]
    return [*sorted((root / "data" / "test").glob("*/*.png"))[:3], root / "part.jpg", *casting]


def _zdm_verdict(running: cs.Running, data: bytes, version: int = 0) -> classifier_pb2.Verdict:
    model = cs.common_pb2.ModelRef(name=NAME, version=version)
    return running.stub.Classify(cs.request(data, model=model), timeout=30)


def _run_triton(spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same(oip_out: dict[str, Any], i: int, verdict: classifier_pb2.Verdict) -> None:
    assert oip_out["probabilities"][i] == pytest.approx([p.probability for p in verdict.probabilities], abs=1e-6)
    assert oip_out["defect_probability"][i] == pytest.approx(verdict.defect_probability, abs=1e-6)
    assert oip_out["defective"][i] is verdict.defective
    assert oip_out["threshold"][i] == pytest.approx(verdict.threshold)
    assert oip_out["predicted_class"][i] == verdict.predicted_class


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient not installed")
def test_tritonclient_classifies_image_files_like_classify(service: tuple[cs.Running, Path], tmp_path: Path) -> None:
    running, root = service
    files = _image_files(root)
    pixels = cs.tensors([f.read_bytes() for f in files[:2]])
    np.save(tmp_path / "pixels.npy", pixels)
    part_id = f"oip-part-{uuid.uuid4().hex[:6]}"
    spec = {
        "url": f"127.0.0.1:{running.app.port}",
        "model": NAME,
        "images": [str(f) for f in files],
        "outputs": OUTPUTS,
        "alias": "production",
        "pixels": str(tmp_path / "pixels.npy"),
        "part_id": part_id,
    }
    seen = _run_triton(spec, tmp_path)

    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["unknown_model_ready"] is False
    assert seen["server"]["name"] == "zdm-classifier"
    meta = seen["metadata"]
    assert meta["name"] == NAME and meta["versions"] == ["1", "2"]
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {"image": "BYTES", "pixels": "FP32"}
    pixels_meta = next(t for t in meta["inputs"] if t["name"] == "pixels")
    assert pixels_meta["shape"] == ["-1", "3", str(cs.IMAGE_SIZE), str(cs.IMAGE_SIZE)]
    assert [t["name"] for t in meta["outputs"]] == OUTPUTS

    # Encoded files (PNG and JPEG) in one BYTES tensor: the default version (alias production = 2).
    batch = seen["bytes"]
    assert (batch["model_name"], batch["model_version"], batch["id"]) == (NAME, "2", "oip-1")
    verdicts = [_zdm_verdict(running, f.read_bytes()) for f in files]
    assert {v.model.version for v in verdicts} == {2}
    for i, verdict in enumerate(verdicts):
        _assert_same(batch, i, verdict)
    # Versions and aliases map onto model_version.
    assert seen["alias"]["model_version"] == "2"
    _assert_same(seen["alias"], 0, verdicts[0])
    assert seen["pinned"]["model_version"] == "1"
    v1 = _zdm_verdict(running, files[0].read_bytes(), version=1)
    _assert_same(seen["pinned"], 0, v1)
    assert seen["pinned"]["probabilities"][0] != pytest.approx(batch["probabilities"][0], abs=1e-6)
    # A preprocessed FP32 NCHW tensor gives the verdicts of the encoded images it came from.
    for i in range(2):
        _assert_same(seen["pixels"], i, verdicts[i])

    assert seen["errors"] == {
        "unknown_model": "StatusCode.NOT_FOUND",
        "unknown_version": "StatusCode.NOT_FOUND",
        "unknown_metadata": "StatusCode.NOT_FOUND",
        "bad_image": "StatusCode.INVALID_ARGUMENT",
        "bad_shape": "StatusCode.INVALID_ARGUMENT",
        "unknown_output": "StatusCode.INVALID_ARGUMENT",
    }
    # OIP verdicts are audited like zdm.v1's; the part_id parameter lands in the record.
    audit = running.stub.QueryAudit(classifier_pb2.AuditQuery(part_id=part_id), timeout=10)
    assert len(audit.records) == len(files)
    assert {r.model.version for r in audit.records} == {2}
    assert {e.request_id for e in running.app.audit.query(part_id)} == {"oip-1"}  # the OIP request id


def _oip(running: cs.Running) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(running.channel)


def test_typed_contents_and_base64_images(service: tuple[cs.Running, Path]) -> None:
    """Clients that send typed contents (not raw) or base64 text (KServe's examples) get the same verdicts."""
    import base64

    running, root = service
    data = _image_files(root)[0].read_bytes()
    verdict = _zdm_verdict(running, data)
    request = oip.ModelInferRequest(model_name=NAME)
    tensor = request.inputs.add(name="input-0", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([data, base64.b64encode(data)])
    response = _oip(running).ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == OUTPUTS
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    expected = [p.probability for p in verdict.probabilities]
    assert probs[0].tolist() == pytest.approx(expected, abs=1e-6) and probs[1].tolist() == pytest.approx(expected, abs=1e-6)
    assert response.parameters["backend"].string_param == verdict.backend

    pixels = cs.tensors([data])
    request = oip.ModelInferRequest(model_name=NAME)
    request.outputs.add(name="defective")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(pixels.shape))
    tensor.contents.fp32_contents.extend(pixels.ravel().tolist())
    response = _oip(running).ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["defective"]
    assert np.frombuffer(response.raw_output_contents[0], dtype=np.bool_).tolist() == [verdict.defective]


_PIXELS_SHAPE = [1, 3, cs.IMAGE_SIZE, cs.IMAGE_SIZE]
_NANS = np.full(3 * cs.IMAGE_SIZE**2, np.nan, np.float32).tobytes()


@pytest.mark.parametrize(
    "inputs, raw, fragment",
    [
        ([("x", "INT64", [1])], [], "datatype"),
        ([("a", "BYTES", [1]), ("b", "BYTES", [1])], [], "exactly one input"),
        ([("image", "BYTES", [1])], [b"\x09\x00\x00\x00ab"], "runs past the end"),
        ([("image", "BYTES", [2])], [b"\x01\x00\x00\x00a"], "1 elements"),
        ([("image", "BYTES", [1, 2])], [], "[N] or [N, 1]"),
        ([("pixels", "FP32", _PIXELS_SHAPE)], [_NANS], "NaN"),
        ([("pixels", "FP32", _PIXELS_SHAPE)], [b"\x00" * 12], "raw bytes"),
    ],
)
def test_bad_tensors_are_invalid_argument(
    service: tuple[cs.Running, Path], inputs: list[tuple[str, str, list[int]]], raw: list[bytes], fragment: str
) -> None:
    running, _ = service
    request = oip.ModelInferRequest(model_name=NAME, raw_input_contents=raw)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    with pytest.raises(grpc.RpcError) as info:
        _oip(running).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_model_ready_follows_loading(service: tuple[cs.Running, Path]) -> None:
    """Version 1 is not loaded until a request pins it; an unknown version is not ready either."""
    running, root = service
    stub = _oip(running)
    assert stub.ModelReady(oip.ModelReadyRequest(name=NAME, version="production"), timeout=10).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name=NAME, version="7"), timeout=10).ready
    _zdm_verdict(running, _image_files(root)[0].read_bytes(), version=1)
    assert stub.ModelReady(oip.ModelReadyRequest(name=NAME, version="1"), timeout=10).ready
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(oip.ModelMetadataRequest(name=NAME, version="staging"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
