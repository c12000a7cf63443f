"""The manifest.json published beside every model.safetensors: everything a consumer needs.

The classifier and the explainer read only this (plus the weights); they never re-derive the
trainer's choices.
"""

from __future__ import annotations

import time
from typing import Any

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


class VerificationInfo(BaseModel):
    """The verification set published beside the weights (format: common.verification)."""

    file: str
    sha256: str
    count: int
    class_counts: dict[str, int] = Field(default_factory=dict)
    source: str = "val"  # the split the images come from
    reference: str = "torch-cpu-fp32"  # what computed the stored probabilities


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
    verification: VerificationInfo | None = None  # None in versions published before verification sets

    @property
    def defect_index(self) -> int:
        return self.classes.index(self.defect_class)
