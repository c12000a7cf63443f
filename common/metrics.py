"""Classification metrics of one split, and the cosine similarity between two checkpoints.

`classification_metrics` returns a dict whose keys are the fields of the proto `SplitMetrics`
(without `split`, which is the key the manifest stores it under). Divisions by zero give 0, as
scikit-learn's `zero_division=0`; macro averages are the unweighted mean over every class, the
weighted ones weight each class by its support (the thesis reports the weighted ones). Per-class
precision / recall / F1 / support are in ``per_class``; ``balanced_accuracy`` is the mean recall over
the classes present in the split (any always-one-class model scores 1 / classes, whatever the
imbalance, which is why the trainer's quality gate reads it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.errors import InvalidArgument

_COSINE_CHUNK = 1 << 22  # elements converted to float64 at a time


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """n x n counts, rows = true class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise InvalidArgument(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, labels in (("y_true", t), ("y_pred", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise InvalidArgument(f"{name} holds labels outside [0, {n})")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    loss: float | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, weighted and macro precision / recall / F1, per-class metrics and the
    confusion matrix.

    Args:
        y_true: true class indices into `class_names`.
        y_pred: predicted class indices.
        class_names: the classes, in index order.
        loss: the split's mean loss, passed through (None when not computed).
    """
    n = len(class_names)
    if n == 0:
        raise InvalidArgument("class_names is empty")
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    samples = int(cm.sum())
    weights = support / samples if samples else np.zeros(n)
    return {
        "loss": None if loss is None else float(loss),
        "accuracy": float(tp.sum() / samples) if samples else 0.0,
        "balanced_accuracy": float(recall[support > 0].mean()) if samples else 0.0,
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": [
            {
                "class_name": str(name),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion": [int(v) for v in cm.ravel()],
        "class_names": [str(c) for c in class_names],
        "samples": samples,
    }


def cosine_similarity(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]) -> tuple[float, int, int]:
    """Cosine similarity of two checkpoints' flattened floating-point tensors.

    Compares the tensors present in both with the same shape, in float64, one tensor (chunk) at a
    time, so no concatenated copy of the model is made. Pass `dict(model.named_parameters())` to
    compare parameters only; a state dict also brings BatchNorm running statistics.

    Returns:
        (cosine, compared, skipped): the similarity (0.0 when either side is all zeros), the number
        of tensors compared, and the number of tensors of either side left out (missing on the other
        side, other shape, or not floating point).
    """
    dot = norm_a = norm_b = 0.0
    compared = skipped = 0
    for name, a in state_a.items():
        b = state_b.get(name)
        if b is None or a.shape != b.shape or not (a.is_floating_point() and b.is_floating_point()):
            skipped += 1
            continue
        compared += 1
        flat_a = a.detach().reshape(-1)
        flat_b = b.detach().reshape(-1)
        for start in range(0, flat_a.numel(), _COSINE_CHUNK):
            ca = flat_a[start : start + _COSINE_CHUNK].to(device="cpu", dtype=torch.float64)
            cb = flat_b[start : start + _COSINE_CHUNK].to(device="cpu", dtype=torch.float64)
            dot += float(torch.dot(ca, cb))
            norm_a += float(torch.dot(ca, ca))
            norm_b += float(torch.dot(cb, cb))
    skipped += sum(1 for name in state_b if name not in state_a)
    if compared == 0:
        raise InvalidArgument("the two checkpoints share no floating-point tensor of the same name and shape")
    denom = (norm_a**0.5) * (norm_b**0.5)
    return (dot / denom if denom > 0 else 0.0), compared, skipped
