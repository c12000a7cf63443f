"""The verification set of a published version: validation inputs with their torch fp32 probabilities.

The trainer stores one beside the weights (:mod:`services.trainer.verification` builds it); the
classifier runs every backend it builds on it and serves only one that reproduces it
(:mod:`services.classifier.verification`). The bench measures verdict flips with the same functions.

File format (safetensors, no pickles): ``pixels`` uint8 ``N x S x S x 3``, the images after the resize
step of :func:`common.images.preprocess`; ``labels`` int64 ``N``; ``probabilities`` float32 ``N x C``,
the softmax of the torch fp32 CPU logits of exactly the inputs :meth:`VerificationSet.inputs` rebuilds.
Storing the resized uint8 pixels rather than float32 tensors makes the file 4x smaller and loses
nothing: from there on serving is pure arithmetic (normalisation with the manifest's mean / std),
done by the same function here as on the verdict path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from common.errors import ZdmError
from common.images import preprocess_batch
from common.manifest import defect_probability

VERIFICATION_FILE = "verification.safetensors"
_KEYS = ("pixels", "labels", "probabilities")


class VerificationSetError(ZdmError):
    """A version's verification set is missing, corrupt or does not fit its manifest."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class VerificationSet:
    pixels: np.ndarray  # uint8 N x S x S x 3
    labels: np.ndarray  # int64 N
    probabilities: np.ndarray  # float32 N x C (torch fp32 on the CPU)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4 or self.pixels.shape[3] != 3:
            raise VerificationSetError(f"verification pixels must be uint8 N x S x S x 3, got {self.pixels.dtype} "
                                       f"{self.pixels.shape}")
        if self.pixels.shape[1] != self.pixels.shape[2]:
            raise VerificationSetError(f"verification images must be square, got {self.pixels.shape[1:3]}")
        if self.probabilities.ndim != 2 or len(self.pixels) != n or len(self.probabilities) != n:
            raise VerificationSetError(f"verification set sizes disagree: pixels {self.pixels.shape}, labels "
                                       f"{self.labels.shape}, probabilities {self.probabilities.shape}")

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """The float32 ``N x 3 x S x S`` model inputs, normalised exactly as the verdict path does."""
        return preprocess_batch(list(self.pixels), self.image_size, mean, std)

    def class_counts(self, classes: Sequence[str]) -> dict[str, int]:
        return {c: int(np.sum(self.labels == i)) for i, c in enumerate(classes)}

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({
            "pixels": np.ascontiguousarray(self.pixels),
            "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
            "probabilities": np.ascontiguousarray(self.probabilities, dtype=np.float32),
        })

    @classmethod
    def from_bytes(cls, data: bytes, *, sha256: str = "") -> VerificationSet:
        """Parse a stored set; with ``sha256``, refuse bytes that are not the ones the manifest names."""
        from safetensors.numpy import load

        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise VerificationSetError("verification set does not match the sha256 its manifest records")
        try:
            tensors = load(data)
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise VerificationSetError(f"verification set is unreadable: {type(exc).__name__}: {exc}") from exc
        missing = [k for k in _KEYS if k not in tensors]
        if missing:
            raise VerificationSetError(f"verification set lacks {missing}")
        return cls(tensors["pixels"], tensors["labels"].astype(np.int64), tensors["probabilities"].astype(np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (as the verdict path computes it)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def pixels_from_inputs(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of ``N x 3 x S x S`` inputs made from uint8 pixels: uint8 ``N x S x S x 3``.

    Exact for inputs that :func:`common.images.preprocess` made (the float error is ~1e-5 of a grey level).
    """
    m = np.asarray(mean, dtype=np.float64).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
    grey = np.rint((np.asarray(inputs, dtype=np.float64) * s + m) * 255.0)
    return np.clip(grey, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


@dataclass(frozen=True)
class Agreement:
    """How a backend's probabilities compare with the stored ones.

    Attributes:
        images: Images compared.
        flips: Images whose verdict differs: the defect decision at ``threshold`` or the predicted class.
        max_delta: Largest absolute difference of any class probability.
        flipped: Indices of the first flipped images (for logs).
    """

    images: int
    flips: int
    max_delta: float
    flipped: tuple[int, ...] = ()


def verdicts(probabilities: np.ndarray, defect_indices: Sequence[int],
             threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(defective at ``threshold``, predicted class) per row: the two things a verdict reports. A part is
    defective when the summed probability of the defect classes (``Manifest.defect_indices``) reaches it."""
    return defect_probability(probabilities, defect_indices) >= threshold, probabilities.argmax(axis=1)


def compare(reference: np.ndarray, probabilities: np.ndarray, defect_indices: Sequence[int],
            threshold: float) -> Agreement:
    """Verdict flips and max |Δp| of ``probabilities`` against ``reference`` (both ``N x C``)."""
    if reference.shape != probabilities.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match the reference {reference.shape}")
    ref_defect, ref_class = verdicts(reference, defect_indices, threshold)
    got_defect, got_class = verdicts(probabilities, defect_indices, threshold)
    flipped = np.flatnonzero((ref_defect != got_defect) | (ref_class != got_class))
    delta = float(np.max(np.abs(probabilities - reference))) if len(reference) else 0.0
    return Agreement(len(reference), len(flipped), delta, tuple(int(i) for i in flipped[:8]))
