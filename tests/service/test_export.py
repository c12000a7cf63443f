"""`zdm export`: each export loads in its own runtime and gives the live classifier's verdicts on real image files."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from typer.testing import CliRunner

from client.cli import app
from common.datasets.synthetic import generate_dataset
from common.manifest import MANIFEST_FILE
from protos.zdm.v1 import classifier_pb2
from services.classifier.model_export import _sha256
from tests.service import classifier_support as cs

NAME = "casting"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[cs.Running, Path, list[Path]]]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    prefix = f"zdmtest:{uuid.uuid4().hex[:10]}"
    settings = cs.settings_for(root, redis_url, prefix)
    cs.publish(cs.Registry(settings.common.registry), NAME, cs.random_state(5), aliases=["production"])
    generate_dataset(root / "data", train_per_class=1, test_per_class=3, size=cs.IMAGE_SIZE, seed=4)
    files = sorted((root / "data" / "test").glob("*/*.png"))
    running = cs.Running(settings, redis_url)
    yield running, root, files
    running.close()
    cs.delete_prefix(redis_url, prefix)


def _export(root: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        app, ["export", *args, "--registry", str(root / "registry"), "--cache-dir", str(root / "cache"), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _onnx_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": pixels})[0]


def _openvino_logits(xml: Path, pixels: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(pixels)[compiled.outputs[0]])


def _assert_same_verdicts(logits: np.ndarray, running: cs.Running, files: list[Path]) -> None:
    probs = _softmax(logits)
    for path, p in zip(files, probs, strict=True):
        v: classifier_pb2.Verdict = running.stub.Classify(cs.request(path.read_bytes()), timeout=30)
        assert p.tolist() == pytest.approx([c.probability for c in v.probabilities], abs=1e-4)
        defect_p = float(p[cs.CLASSES.index("def_front")])
        assert (defect_p >= v.threshold) is v.defective


def test_onnx_export_runs_in_onnxruntime(service: tuple[cs.Running, Path, list[Path]]) -> None:
    running, root, files = service
    out = _export(root, f"{NAME}:1", "--format", "onnx")
    version_dir = root / "registry" / NAME / "1"
    assert out["folder"] == str(version_dir / "onnx") and not out["reused"]
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    record = manifest["exports"]["onnx"]
    assert list(record["files"]) == ["onnx/model.onnx"]
    assert record["files"]["onnx/model.onnx"]["sha256"] == _sha256(version_dir / "onnx" / "model.onnx")
    assert not list(version_dir.glob(".tmp-*")) and not list(version_dir.glob(".old-*"))

    assert (record["input_name"], record["output_name"]) == ("input", "logits")
    logits = _onnx_logits(version_dir / "onnx" / "model.onnx", cs.tensors([f.read_bytes() for f in files]))
    _assert_same_verdicts(logits, running, files)

    # Again: nothing rewritten. A damaged file is noticed and exported anew.
    mtime = (version_dir / "onnx" / "model.onnx").stat().st_mtime_ns
    assert _export(root, NAME, "--format", "onnx")["reused"]  # alias production = version 1
    assert (version_dir / "onnx" / "model.onnx").stat().st_mtime_ns == mtime
    (version_dir / "onnx" / "model.onnx").write_bytes(b"broken")
    assert not _export(root, f"{NAME}:production", "--format", "onnx")["reused"]
    assert _sha256(version_dir / "onnx" / "model.onnx") == record["files"]["onnx/model.onnx"]["sha256"]


def test_openvino_export_runs_in_openvino(service: tuple[cs.Running, Path, list[Path]]) -> None:
    running, root, files = service
    _export(root, f"{NAME}:1", "--format", "onnx")
    out = _export(root, f"{NAME}:1", "--format", "openvino")
    version_dir = Path(out["folder"]).parent
    assert sorted(out["files"]) == ["openvino/model.bin", "openvino/model.xml"]
    manifest = cs.Registry(root / "registry").manifest(NAME, 1)
    assert set(manifest.exports) == {"onnx", "openvino"}  # the other format's export is kept
    logits = _openvino_logits(version_dir / "openvino" / "model.xml", cs.tensors([f.read_bytes() for f in files]))
    _assert_same_verdicts(logits, running, files)


@pytest.mark.parametrize("fmt, files, runtime", [("onnx", ["model.onnx"], 'platform: "onnxruntime_onnx"'),
                                                 ("openvino", ["model.bin", "model.xml"], 'backend: "openvino"')])
def test_triton_layout_is_a_model_repository(
    service: tuple[cs.Running, Path, list[Path]], tmp_path: Path, fmt: str, files: list[str], runtime: str
) -> None:
    running, root, images = service
    repo = tmp_path / "models"
    out = _export(root, NAME, "--format", fmt, "--layout", "triton", "--output", str(repo))
    model_dir = repo / NAME
    assert out["folder"] == str(model_dir)
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == files
    config = (model_dir / "config.pbtxt").read_text()
    assert f'name: "{NAME}"' in config and runtime in config and "dims: [ 3, 64, 64 ]" in config
    assert (model_dir / "labels.txt").read_text().split() == list(cs.CLASSES)
    sidecar = json.loads((model_dir / "zdm.json").read_text())
    assert sidecar["preprocessing"]["mean"] == cs.MEAN and sidecar["defect_class"] == "def_front"
    for rel, want in out["files"].items():
        assert _sha256(model_dir / "1" / Path(rel).name) == want["sha256"]
    pixels = cs.tensors([f.read_bytes() for f in images])
    if fmt == "onnx":
        logits = _onnx_logits(model_dir / "1" / "model.onnx", pixels)
    else:
        logits = _openvino_logits(model_dir / "1" / "model.xml", pixels)
    _assert_same_verdicts(logits, running, images)


def test_export_errors_are_one_line(service: tuple[cs.Running, Path, list[Path]], tmp_path: Path) -> None:
    _, root, _ = service
    base = ["--registry", str(root / "registry"), "--cache-dir", str(root / "cache")]
    result = CliRunner().invoke(app, ["export", "nope:1", *base])
    assert result.exit_code == 1 and "NOT_FOUND" in result.output
    result = CliRunner().invoke(app, ["export", NAME, "--format", "tflite", *base])
    assert result.exit_code == 1 and "INVALID_ARGUMENT" in result.output and "tflite" in result.output
    result = CliRunner().invoke(app, ["export", NAME, "--layout", "triton", *base])
    assert result.exit_code == 1 and "output folder" in result.output
