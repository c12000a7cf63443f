"""The manifest.json published beside every model.safetensors: everything a consumer needs.

The classifier and the explainer read only this (plus the weights); they never re-derive the
trainer's choices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FORMAT = 1


class Preprocessing(BaseModel):
    """Resize to image_size x image_size, scale to [0, 1], normalise per channel."""

    image_size: int
    mean: list[float]
    std: list[float]
    channels: int = 3


class ExplanationDefaults(BaseModel):
    method: str = "gradcam"  # "gradcam", "gradcam++", "eigencam", "attention"
    layer: str = ""
    threshold: float = 0.4
    normalization: str = "max"  # "max" (the thesis) or "minmax"
    region: str = "all"  # "all" (the thesis) or "peak" (services.explainer.regions)


class FreezeSpec(BaseModel):
    """Exactly one of mode / fraction / prefixes is meaningful; mode wins, then fraction, then prefixes."""

    mode: str | None = None  # "frozen", "partial", "unfrozen"
    fraction: float | None = None
    prefixes: list[str] | None = None

    def describe(self) -> str:
        if self.mode:
            return self.mode
        if self.fraction is not None:
            return f"fraction={self.fraction:g}"
        if self.prefixes:
            return "prefixes=" + ",".join(self.prefixes)
        return "unfrozen"


class ExportedFile(BaseModel):
    size: int
    sha256: str


class ExportRecord(BaseModel):
    """A verified conversion stored in the version's folder by `zdm export` (services.classifier.model_export)."""

    format: str  # "onnx" or "openvino"
    files: dict[str, ExportedFile]  # path relative to the version folder -> size and hash
    input_name: str
    output_name: str  # float32 logits N x C, in `classes` order (softmax gives the probabilities)
    input_shape: list[int]  # N x 3 x S x S with N = -1 (dynamic)
    converter: str  # the conversion's cache entry name: format, size and converter version
    created_at: float = Field(default_factory=time.time)


def defect_indices(classes: list[str], defect_class: str, ok_classes: list[str]) -> list[int]:
    """Logit positions of the defect types: a part is defective when it is not of an ok class (without an
    ok list, as in manifests from before several classes: every class but ``defect_class`` is ok)."""
    ok = set(ok_classes) if ok_classes else set(classes) - {defect_class}
    return [i for i, c in enumerate(classes) if c not in ok]


class VerificationInfo(BaseModel):
    """The verification set published beside the weights (format: common.verification)."""

    file: str
    sha256: str
    count: int
    class_counts: dict[str, int] = Field(default_factory=dict)
    source: str = "val"  # the split the images come from
    reference: str = "torch-cpu-fp32"  # what computed the stored probabilities


def defect_probability(probs: np.ndarray, defect_indices: Sequence[int]) -> np.ndarray:
    """The probability of a defect (last axis: classes): the summed probability of the defect classes. The one
    rule the trainer's operating point, the verification set and the classifier's verdict decide on."""
    return probs[..., list(defect_indices)].sum(axis=-1)


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    name: str
    version: int = 0  # set by the registry on publish
    architecture: str  # zoo key or timm model name
    timm_name: str | None = None  # set when the network is timm's: the folder loads with timm local-dir:
    classes: list[str]
    defect_class: str
    preprocessing: Preprocessing
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)  # split -> metrics dict
    explanation: ExplanationDefaults = Field(default_factory=ExplanationDefaults)
    dataset_fingerprint: str = ""
    weights_source: str = ""
    weights_sha256: str = ""  # of model.safetensors; keys caches of converted models
    trainable_params: int = 0
    total_params: int = 0
    job_id: str = ""
    created_at: float = Field(default_factory=time.time)
    cosine_to_initial: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # Classes meaning "not defective"; empty (manifests before several classes): every class but defect_class.
    ok_classes: list[str] = Field(default_factory=list)
    dataset_check: dict[str, Any] = Field(default_factory=dict)  # the trainer's DatasetReport (proto3 JSON)
    exports: dict[str, ExportRecord] = Field(default_factory=dict)  # format -> files written by `zdm export`
    # -- recipe preset, operating point, quality gate (issue 10) --
    preset: str = ""  # the recipe preset the job started from; the resolved recipe is `recipe`
    # The decision threshold chosen on validation with its goal, figures and ROC / PR points
    # (services.trainer.operating_point); None for models published before it existed (0.5 then).
    operating_point: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # services.trainer.gate.GateReport

    @property
    def decision_threshold(self) -> float | None:
        """The threshold the trainer chose for this version (None: not recorded)."""
        if not self.operating_point or "threshold" not in self.operating_point:
            return None
        return float(self.operating_point["threshold"])
    verification: VerificationInfo | None = None  # None in versions published before verification sets

    @property
    def defect_index(self) -> int:
        return self.classes.index(self.defect_class)

    @property
    def defect_indices(self) -> list[int]:
        return defect_indices(self.classes, self.defect_class, self.ok_classes)
