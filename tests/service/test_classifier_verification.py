"""Served = validated, over gRPC: a backend that changes verdicts is turned down, and it shows."""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets.synthetic import generate_dataset
from common.manifest import VerificationInfo
from common.models.zoo import build_model
from common.verification import VERIFICATION_FILE
from protos.zdm.v1 import classifier_pb2, common_pb2
from services.classifier import export
from services.trainer.data import InMemorySource
from services.trainer.verification import build_verification_set
from tests.service import classifier_support as cs
from tests.service.trainer_support import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with the defect logit pushed up: it calls everything defective."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().bias[cs.CLASSES.index("def_front")] += 50.0
    return other.eval()


@pytest.fixture
def perturbed_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO converts a perturbed copy of the model it is given: a real backend that flips verdicts."""
    cached = export.cached_openvino
    monkeypatch.setattr(export, "cached_openvino",
                        lambda m, size, cache_dir, key: cached(_perturbed(m), size, cache_dir, key + "-perturbed"))


def _publish(registry: cs.Registry, name: str, data_root: Path, *, with_set: bool) -> tuple[cs.Manifest, float]:
    """A random tiny model, with a verification set of its test images when asked; returns (manifest, threshold).

    The threshold lies half-way between the middle two stored defect probabilities, so a backend that
    calls everything defective flips half the verdicts while exact conversions flip none.
    """
    state = cs.random_state(3)
    images, labels = cs.load_split(data_root, "test")
    model = build_model(cs.ARCH, len(cs.CLASSES), pretrained=False, image_size=cs.IMAGE_SIZE)
    model.load_state_dict(state)
    source = InMemorySource(cs.tensors(images), labels.astype(np.int64), 16, 0, None, 0)
    vset = build_verification_set(model, source, cs.MEAN, cs.STD, len(cs.CLASSES), max_images=48)
    p = np.sort(vset.probabilities[:, cs.CLASSES.index("def_front")])
    threshold = float(p[len(p) // 2 - 1] + p[len(p) // 2]) / 2
    manifest = cs.manifest(name)
    extra = {}
    if with_set:
        data = vset.to_bytes()
        extra[VERIFICATION_FILE] = data
        manifest.verification = VerificationInfo(file=VERIFICATION_FILE, sha256=hashlib.sha256(data).hexdigest(),
                                                 count=len(vset), class_counts=vset.class_counts(cs.CLASSES))
    return registry.publish(manifest, state, extra_files=extra), threshold


def _info(running: cs.Running, name: str) -> classifier_pb2.ServedModel:
    return running.stub.GetModelInfo(classifier_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=name)))


def test_backend_that_flips_verdicts_is_rejected_reported_and_counted(
    tmp_path: Path, redis_url: str, perturbed_openvino: None
) -> None:
    generate_dataset(tmp_path / "data", train_per_class=1, test_per_class=30, size=cs.IMAGE_SIZE, seed=1)
    prefix = f"zdmtest:{uuid.uuid4().hex[:10]}"
    registry = cs.Registry(tmp_path / "registry")
    manifest, threshold = _publish(registry, "verified", tmp_path / "data", with_set=True)
    _publish(registry, "legacy", tmp_path / "data", with_set=False)
    settings = cs.settings_for(tmp_path, redis_url, prefix, backend="openvino", precision="f32",
                               default_model="verified", default_threshold=threshold)
    running = cs.Running(settings, redis_url)
    try:
        info = _info(running, "verified")
        v = info.verification
        assert info.backend == "onnxruntime" and v.method == "verification set"
        assert v.images == manifest.verification.count and v.threshold == pytest.approx(threshold)
        assert v.max_delta < 1e-4 and v.tolerance == pytest.approx(settings.verify_tolerance)
        (rejected,) = v.rejected
        assert (rejected.backend, rejected.reason) == ("openvino-f32", "verdict_flips")
        assert rejected.flips >= v.images // 2 and "flipped" in rejected.detail
        counter = running.app.metrics.rejected_backends
        assert counter.labels("openvino-f32", "verdict_flips")._value.get() == 1

        # A version published before verification sets still serves, and says what it was checked on.
        legacy = _info(running, "legacy")
        assert legacy.verification.method.startswith("random inputs only") and legacy.verification.images == 0
        verdict = running.stub.Classify(cs.request(cs.load_split(tmp_path / "data", "test")[0][0],
                                                   model=common_pb2.ModelRef(name="legacy")))
        assert verdict.backend == legacy.backend and len(verdict.probabilities) == 2
    finally:
        running.close()
        cs.delete_prefix(redis_url, prefix)
