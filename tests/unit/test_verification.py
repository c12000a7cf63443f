"""Served = validated: the verification set (trainer side) and the verified backend ladder (classifier side)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from common.datasets.synthetic import generate_dataset
from common.manifest import Manifest, Preprocessing, VerificationInfo
from common.models.loading import load_published
from common.registry import Registry
from common.verification import (
    VERIFICATION_FILE,
    VerificationSet,
    VerificationSetError,
    compare,
    pixels_from_inputs,
    softmax,
)
from services.classifier import export
from services.classifier.backends import create_backend
from services.classifier.export import ExportError
from services.classifier.verification import NoiseVerifier, SetVerifier, verifier_for
from services.trainer.data import InMemorySource
from services.trainer.publish import publish
from services.trainer.spec import parse_job_spec
from services.trainer.training import fit
from services.trainer.verification import allocate, build_verification_set
from tests.service.trainer_support import one_torch_thread
from tests.unit.test_backends import synthetic_images, tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 32
MEAN, STD = [0.5643] * 3, [0.2386] * 3


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _source(n: int, defect_share: float, seed: int = 0) -> InMemorySource:
    """Normalised inputs made from uint8 pixels (as the trainer's are), labels with the given defect share."""
    x, _ = synthetic_images(n, SIZE, np.random.default_rng(seed))
    pixels = pixels_from_inputs(x, MEAN, STD)
    labels = (np.arange(n) < round(n * defect_share)).astype(np.int64)[np.random.default_rng(seed).permutation(n)]
    inputs = VerificationSet(pixels, labels, np.zeros((n, 2), np.float32)).inputs(MEAN, STD)
    return InMemorySource(inputs, labels, 16, 0, None, 0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model("test_resnet", train_steps=0)


@pytest.fixture(scope="module")
def vset(model: nn.Module) -> VerificationSet:
    return build_verification_set(model, _source(120, 0.5), MEAN, STD, 2, max_images=64)


def _perturbed(model: nn.Module) -> nn.Module:
    """The same network with the defect logit pushed up: every verdict says defective."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().bias[1] += 50.0
    return other.eval()


def _convert_perturbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO conversions (cached or not) run on a perturbed copy: a real backend that changes verdicts."""
    cached, in_memory = export.cached_openvino, export.to_openvino
    monkeypatch.setattr(export, "cached_openvino",
                        lambda m, size, cache_dir, key: cached(_perturbed(m), size, cache_dir, key + "-perturbed"))
    monkeypatch.setattr(export, "to_openvino", lambda m, size: in_memory(_perturbed(m), size))


# -- the set -----------------------------------------------------------------------------------------

def test_allocation_is_balanced_and_capped() -> None:
    assert allocate([500, 12], 64) == [52, 12]  # rare defects: all of them
    assert allocate([500, 400], 64) == [32, 32]
    assert allocate([3, 2], 64) == [3, 2]
    assert allocate([10, 0, 10], 7) == [4, 0, 3] or sum(allocate([10, 0, 10], 7)) == 7


def test_set_keeps_rare_defects_and_reproduces_the_model(model: nn.Module) -> None:
    vset = build_verification_set(model, _source(200, 0.05), MEAN, STD, 2, max_images=40)

    assert len(vset) == 40 and int(vset.labels.sum()) == 10  # all 10 defects of 200, 30 ok images
    with torch.inference_mode():
        probs = softmax(model(torch.from_numpy(vset.inputs(MEAN, STD))).numpy())
    assert np.abs(probs - vset.probabilities).max() < 1e-5
    # The stored pixels are the trainer's inputs: re-normalising them gives the same tensors.
    first = next(_source(200, 0.05).batches(0, False))[0].numpy()
    np.testing.assert_allclose(VerificationSet(pixels_from_inputs(first, MEAN, STD), np.zeros(16, np.int64),
                                               np.zeros((16, 2), np.float32)).inputs(MEAN, STD), first, atol=1e-6)


def test_byte_cap_and_round_trip(model: nn.Module, vset: VerificationSet) -> None:
    small = build_verification_set(model, _source(60, 0.5), MEAN, STD, 2, max_bytes=10 * SIZE * SIZE * 3)
    assert len(small) == 10
    data = vset.to_bytes()
    back = VerificationSet.from_bytes(data, sha256=hashlib.sha256(data).hexdigest())
    np.testing.assert_array_equal(back.pixels, vset.pixels)
    np.testing.assert_array_equal(back.probabilities, vset.probabilities)
    with pytest.raises(VerificationSetError, match="sha256"):
        VerificationSet.from_bytes(data[:-1] + b"x", sha256=hashlib.sha256(data).hexdigest())


def test_compare_counts_threshold_and_class_flips() -> None:
    ref = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8]])
    got = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    assert compare(ref, got, [1], 0.5).flips == 1
    assert compare(ref, got, [1], 0.4).flips == 1  # the defect decision holds at 0.4, the predicted class flips
    assert compare(ref, ref, [1], 0.5).flips == 0 and compare(ref, got, [1], 0.5).max_delta == pytest.approx(0.1)


def test_compare_decides_several_defect_types_on_their_summed_probability() -> None:
    # classes crack, chip, ok: the defect score moves from 0.52 to 0.48 while the arg-max (ok) holds
    ref = np.array([[0.26, 0.26, 0.48]])
    got = np.array([[0.24, 0.24, 0.52]])
    assert compare(ref, got, [0, 1], 0.5).flips == 1
    assert compare(ref, got, [0, 1], 0.4).flips == 0


def test_fit_publishes_a_verification_set(tmp_path) -> None:
    generate_dataset(tmp_path / "ds", train_per_class=10, test_per_class=2, size=SIZE)
    config = parse_job_spec({"architecture": "test_resnet", "dataset_path": str(tmp_path / "ds"), "model_name": "vs",
                             "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
                             "recipe": {"epochs": 1, "batch_size": 4, "image_size": SIZE, "precision": "PRECISION_FP32"}},
                            [tmp_path])
    result = fit(config)
    registry = Registry(tmp_path / "registry")
    manifest, _ = publish(registry, None, "t", config, result, "job-1")

    info = manifest.verification
    assert info is not None and info.file == VERIFICATION_FILE
    data = (registry.path(manifest.name, manifest.version) / info.file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == info.sha256
    assert info.count == len(VerificationSet.from_bytes(data)) and min(info.class_counts.values()) >= 1
    served = load_published(registry, manifest)
    verifier = verifier_for(registry, manifest, served, 0.5)
    assert isinstance(verifier, SetVerifier) and verifier.images == info.count
    assert verifier.check(create_backend("torch", served, SIZE, None, "unused"), lossy=False).passed


# -- the ladder ----------------------------------------------------------------------------------------

def _split_threshold(vset: VerificationSet) -> float:
    """A threshold half-way between the middle two stored defect probabilities: half the verdicts on each side.

    The untrained test network's probabilities sit near 0.5; at this threshold a backend that calls
    everything defective flips half the set, while fp32 conversions (|dp| ~1e-7) flip none.
    """
    p = np.sort(vset.probabilities[:, 1])
    return float(p[len(p) // 2 - 1] + p[len(p) // 2]) / 2

def test_backend_that_changes_verdicts_is_rejected_and_the_next_serves(
        monkeypatch, caplog, tmp_path, model: nn.Module, vset: VerificationSet) -> None:
    _convert_perturbed(monkeypatch)
    threshold = _split_threshold(vset)
    verifier = SetVerifier(vset, MEAN, STD, [1], threshold)

    with caplog.at_level(logging.WARNING):
        backend = create_backend("auto", model, SIZE, tmp_path, "ckpt", verifier=verifier)

    report = backend.verification
    assert backend.name == "onnxruntime" and report is not None and report.chosen.backend == "onnxruntime"
    (rejected,) = report.rejected
    assert rejected.backend == "openvino-f32" and rejected.reason == "verdict_flips"
    assert rejected.flips == int((vset.probabilities[:, 1] < max(threshold, 0.5)).sum()) > 0
    assert "backend openvino-f32 rejected (verdict_flips)" in caplog.text
    assert report.chosen.max_delta < 1e-4 and report.images == len(vset)


def test_outcomes_are_cached_per_conversion_and_set(monkeypatch, tmp_path, model, vset) -> None:
    _convert_perturbed(monkeypatch)
    threshold = _split_threshold(vset)
    checks: list[str] = []
    original = SetVerifier.check
    monkeypatch.setattr(SetVerifier, "check", lambda self, b, lossy: checks.append(b.name) or original(self, b, lossy=lossy))

    create_backend("auto", model, SIZE, tmp_path, "ckpt", verifier=SetVerifier(vset, MEAN, STD, [1], threshold))
    again = create_backend("auto", model, SIZE, tmp_path, "ckpt", verifier=SetVerifier(vset, MEAN, STD, [1], threshold))
    assert checks == ["openvino-f32", "onnxruntime"]  # the second build reused both outcomes
    assert again.name == "onnxruntime" and all(o.from_record for o in again.verification.outcomes)
    assert len(list(tmp_path.rglob(f"{export.VERIFIED_DIR}/*.json"))) == 2

    create_backend("auto", model, SIZE, tmp_path, "ckpt", verifier=SetVerifier(vset, MEAN, STD, [1], threshold + 1e-4))
    # Another threshold is another outcome. The rejected f32 entry came from the cache, so it is converted
    # again once in case the cache key was reused for other weights (it is still rejected).
    assert checks[2:] == ["openvino-f32", "openvino-f32", "onnxruntime"]


def test_torch_that_does_not_reproduce_its_set_fails_the_load(model: nn.Module, vset: VerificationSet) -> None:
    """Stored probabilities that the weights do not give: nothing is served, and the error says why."""
    tampered = VerificationSet(vset.pixels, vset.labels, vset.probabilities[:, ::-1].copy())
    with pytest.raises(ExportError, match="not the ones that were validated"):
        create_backend("onnxruntime", model, SIZE, None, "unused", verifier=SetVerifier(tampered, MEAN, STD, [1], 0.5))


def test_old_version_without_a_set_is_checked_on_random_inputs(tmp_path, model: nn.Module) -> None:
    registry = Registry(tmp_path)
    manifest = registry.publish(Manifest(name="old", architecture="test_resnet", timm_name="test_resnet",
                                         classes=["def_front", "ok_front"], defect_class="def_front",
                                         preprocessing=Preprocessing(image_size=SIZE, mean=MEAN, std=STD)),
                                model.state_dict())
    verifier = verifier_for(registry, manifest, model, 0.5)
    assert isinstance(verifier, NoiseVerifier)
    backend = create_backend("onnxruntime", model, SIZE, None, "unused", verifier=verifier)
    assert backend.verification.method.startswith("random inputs only") and not backend.verification.rejected

    named = manifest.model_copy(update={"verification": VerificationInfo(file=VERIFICATION_FILE, sha256="0" * 64,
                                                                         count=3)})
    with pytest.raises(VerificationSetError, match="cannot read"):
        verifier_for(registry, named, model, 0.5)
