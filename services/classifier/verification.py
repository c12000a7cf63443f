"""Accept a backend only if it serves what was validated: the version's verification set.

A *verifier* judges one built backend and returns an :class:`Outcome`; :func:`create_backend
<services.classifier.backends.create_backend>` walks its ladder (OpenVINO bf16 -> f32 -> ONNX Runtime
-> torch) until one passes and attaches a :class:`VerificationReport` (the chosen backend and every
rejection with its reason) to the backend it returns. GetModelInfo and the metrics read that report.

- :class:`SetVerifier` (versions with a verification set): runs the set's images through the backend
  and passes it only when no verdict flips (defect decision at the operating threshold, predicted
  class) and max |Δp| over all classes stays within the tolerance (``DEFAULT_TOLERANCE``; the reasoning
  is in docs/classifier.md).
- :class:`NoiseVerifier` (older versions without a set): the smoke check that was all there was
  before, logits on a fixed random batch against torch fp32 in memory. It catches broken conversions,
  not precision loss; the report says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from common.manifest import Manifest
from common.registry import Registry
from common.verification import VerificationSet, VerificationSetError, compare, softmax
from services.classifier.export import ExportError
from services.classifier.thresholds import operating_threshold

logger = logging.getLogger(__name__)

# Max |Δp| a backend may differ from torch fp32 on any class probability of any verification image.
# fp32 conversions stay below 1e-5; see docs/classifier.md ("Served = validated") for the choice.
DEFAULT_TOLERANCE = 0.01
_BATCH = 32

REASON_FLIPS = "verdict_flips"
REASON_DELTA = "probability_delta"
REASON_OUTPUT = "bad_output"
REASON_BUILD = "build_error"


class _Infers(Protocol):
    name: str

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Outcome:
    """The verdict on one candidate backend.

    Attributes:
        backend: Candidate name (``openvino-bf16``, ``onnxruntime``, ...).
        passed: True when it may serve.
        reason: Empty when passed; else one of the ``REASON_*`` constants (the metric's label).
        detail: A sentence for logs and GetModelInfo.
        flips: Verdicts that differ from the reference (verification sets only).
        max_delta: Max |Δp| (verification sets) or relative logit error (random inputs).
        from_record: The outcome was read from the conversion cache's record, not measured now.
    """

    backend: str
    passed: bool
    reason: str = ""
    detail: str = ""
    flips: int = 0
    max_delta: float = 0.0
    from_record: bool = False

    def to_record(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "from_record"}

    @classmethod
    def read_record(cls, record: dict[str, object]) -> Outcome:
        return cls(**{**record, "from_record": True})  # type: ignore[arg-type]


@dataclass
class VerificationReport:
    """How the serving backend was chosen: every candidate tried, in order, the last one serving."""

    method: str
    images: int = 0
    threshold: float = 0.0
    tolerance: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def chosen(self) -> Outcome | None:
        return self.outcomes[-1] if self.outcomes and self.outcomes[-1].passed else None

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


class Verifier(Protocol):
    method: str
    images: int
    threshold: float
    tolerance: float
    # Identifies everything the outcome depends on besides the backend (None: outcomes are not cached).
    identity: str | None
    # Whether torch fp32 on the CPU itself must be checked (it is the reference of random-input checks).
    checks_reference: bool

    def check(self, backend: _Infers, *, lossy: bool) -> Outcome: ...


class SetVerifier:
    """Judges backends on a stored verification set."""

    checks_reference = True
    method = "verification set"

    def __init__(self, vset: VerificationSet, mean: list[float], std: list[float], defect_indices: Sequence[int],
                 threshold: float, tolerance: float = DEFAULT_TOLERANCE, *, sha256: str = "") -> None:
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"verification tolerance must be in (0, 1), got {tolerance}")
        self.vset = vset
        self.inputs = vset.inputs(mean, std)
        self.defect_indices = list(defect_indices)
        self.threshold = threshold
        self.tolerance = tolerance
        self.images = len(vset)
        digest = sha256 or hashlib.sha256(vset.to_bytes()).hexdigest()
        key = {"set": digest, "mean": mean, "std": std, "threshold": threshold, "tolerance": tolerance,
               "defect_indices": self.defect_indices}
        self.identity = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def probabilities(self, backend: _Infers) -> np.ndarray:
        chunks = [backend.infer(self.inputs[i:i + _BATCH]) for i in range(0, len(self.inputs), _BATCH)]
        return softmax(np.concatenate(chunks))

    def check(self, backend: _Infers, *, lossy: bool) -> Outcome:
        try:
            probs = self.probabilities(backend)
        except Exception as exc:  # a backend that cannot run the set cannot serve
            return Outcome(backend.name, False, REASON_OUTPUT, f"failed on the verification set: {exc}")
        if probs.shape != self.vset.probabilities.shape or not np.all(np.isfinite(probs)):
            return Outcome(backend.name, False, REASON_OUTPUT,
                           f"output {probs.shape} (finite: {bool(np.isfinite(probs).all())}) vs "
                           f"{self.vset.probabilities.shape}")
        agreement = compare(self.vset.probabilities, probs, self.defect_indices, self.threshold)
        summary = (f"{agreement.flips} of {agreement.images} verdicts flipped at threshold {self.threshold:.4g}, "
                   f"max |dp| {agreement.max_delta:.3g} (tolerance {self.tolerance:.3g})")
        if agreement.flips:
            return Outcome(backend.name, False, REASON_FLIPS, f"{summary}; flipped images {list(agreement.flipped)}",
                           agreement.flips, agreement.max_delta)
        if agreement.max_delta > self.tolerance:
            return Outcome(backend.name, False, REASON_DELTA, summary, 0, agreement.max_delta)
        return Outcome(backend.name, True, "", summary, 0, agreement.max_delta)


class NoiseVerifier:
    """Versions without a verification set: compare logits on random inputs with torch fp32 in memory."""

    checks_reference = False
    method = "random inputs only (this version has no verification set)"
    identity = None
    images = 0  # verification images: none (4 random inputs)
    threshold = 0.0

    def __init__(self, model: nn.Module, image_size: int) -> None:
        self.model = model
        self.image_size = image_size
        self.tolerance = VERIFY_TOLERANCE[False]

    def check(self, backend: _Infers, *, lossy: bool) -> Outcome:
        try:
            rel = verify_against_torch(backend, self.model, self.image_size, lossy=lossy)
        except ExportError as exc:
            return Outcome(backend.name, False, REASON_OUTPUT, exc.message)
        return Outcome(backend.name, True, "", f"relative logit error {rel:.3g} on random inputs", 0, rel)


def verifier_for(registry: Registry, manifest: Manifest, model: nn.Module, default_threshold: float,
                 tolerance: float = DEFAULT_TOLERANCE) -> SetVerifier | NoiseVerifier:
    """The verifier of a published version: its verification set when it has one.

    Raises:
        VerificationSetError: the manifest names a set that is missing, altered or does not fit the model.
    """
    pre = manifest.preprocessing
    info = manifest.verification
    if info is None:
        logger.warning("model %s:%d has no verification set (published before they existed); backends are "
                       "checked on random inputs only", manifest.name, manifest.version)
        return NoiseVerifier(model, pre.image_size)
    path = registry.path(manifest.name, manifest.version) / info.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerificationSetError(f"model {manifest.name}:{manifest.version}: cannot read its verification set "
                                   f"{info.file}: {exc}") from exc
    vset = VerificationSet.from_bytes(data, sha256=info.sha256)
    if vset.image_size != pre.image_size or vset.num_classes != len(manifest.classes):
        raise VerificationSetError(f"verification set of {manifest.name}:{manifest.version} holds {vset.image_size} px "
                                   f"images with {vset.num_classes} classes; the model takes {pre.image_size} px and "
                                   f"has {len(manifest.classes)}")
    return SetVerifier(vset, pre.mean, pre.std, manifest.defect_indices,
                       operating_threshold(manifest, default_threshold), tolerance, sha256=info.sha256)


# --------------------------------------------------------------------------------------------------
# Random-input smoke check (versions without a verification set)
# --------------------------------------------------------------------------------------------------

# Tolerances on max |logit difference| / max |torch logit| (floored at 1e-3, for near-zero logits).
# bf16 keeps 8 mantissa bits: on the timm test models and resnet18 logits moved by at most ~1.2 % of
# their scale; a broken conversion is off by the order of the logits themselves.
VERIFY_TOLERANCE = {False: 1e-3, True: 0.1}
# A model can be chaotic in fp32 itself (an untrained EfficientNetV2 has activations ~3e4, and two
# torch memory layouts disagree by ~10 %). The tolerance is then widened to this many times the
# model's own layout-to-layout difference, and a warning says the check is weak.
_NOISE_FACTOR = 10.0
_VERIFY_SCALE_FLOOR = 1e-3


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), _VERIFY_SCALE_FLOOR))


def verify_against_torch(backend: _Infers, model: nn.Module, image_size: int, *, lossy: bool) -> float:
    """Compare ``backend`` with eager fp32 torch on a fixed random batch; return the relative error.

    Catches conversions that "succeed" but compute something else (a wrong layout, a dropped layer,
    a batch size baked in: the check uses 4 inputs, the trace used 2). A smoke check, not an accuracy
    test. The tolerance grows with the model's own fp32 noise (torch on NCHW vs channels_last input).

    Raises:
        ExportError: non-finite outputs, a shape mismatch or an error above tolerance.
    """
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(4, 3, image_size, image_size, generator=gen)
    with torch.inference_mode():
        ref = model(x).float().numpy()
        alt = model(x.contiguous(memory_format=torch.channels_last)).float().numpy()
    got = backend.infer(x.numpy())
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"{backend.name} output {got.shape} (finite: {np.isfinite(got).all()}) vs {ref.shape}")
    noise = _relative_error(alt, ref)
    tolerance = max(VERIFY_TOLERANCE[lossy], _NOISE_FACTOR * noise)
    if noise > VERIFY_TOLERANCE[False]:
        logger.warning(
            "model is numerically unstable in fp32 (two torch layouts differ by %.3g of the logit scale); "
            "checking %s against torch only to %.3g",
            noise,
            backend.name,
            tolerance,
        )
    rel = _relative_error(got, ref)
    if rel > tolerance:
        raise ExportError(f"{backend.name} disagrees with torch: relative logit error {rel:.3g} > {tolerance:.3g}")
    return rel
