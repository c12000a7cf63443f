"""The decision threshold a job chooses on its validation split, the curve it was read from, and
metrics at a threshold.

The decision is ``p(defect) >= threshold``; below it the image gets the most probable other class.
Candidate thresholds are the validation scores themselves (between two neighbouring scores no
validation decision changes). Having picked the best candidate for the goal, the threshold is put
midway between it and the next lower score: the same validation decisions, with the largest margin
on the side of catching defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.manifest import defect_probability
from common.metrics import classification_metrics
from services.trainer.spec import OperatingPointConfig

FIXED_THRESHOLD = 0.5
CURVE_POINTS = 101  # at most this many (threshold, recall, fpr, precision) points are stored


@dataclass
class OperatingPoint:
    threshold: float
    goal: str
    target_recall: float
    cost_ratio: float
    recall: float
    specificity: float
    precision: float
    balanced_accuracy: float
    goal_met: bool
    roc_auc: float
    # ROC and PR in one list: {"threshold", "recall" (= tpr), "fpr", "precision"}, threshold descending.
    curve: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self, with_curve: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_curve:
            data.pop("curve")
        return data


def roc_auc(is_defect: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random defect scores above a random ok image (ties count half); 0.5 if one side is empty."""
    pos, neg = score[is_defect], score[~is_defect]
    if not len(pos) or not len(neg):
        return 0.5
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _rates(is_defect: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    flagged = score[None, :] >= thresholds[:, None]
    tp = (flagged & is_defect[None, :]).sum(1).astype(np.float64)
    fp = (flagged & ~is_defect[None, :]).sum(1).astype(np.float64)
    pos, neg = float(is_defect.sum()), float((~is_defect).sum())
    recall = tp / pos if pos else np.zeros_like(tp)
    fpr = fp / neg if neg else np.zeros_like(fp)
    flagged_n = tp + fp
    precision = np.divide(tp, flagged_n, out=np.ones_like(tp), where=flagged_n > 0)
    return {"tp": tp, "fp": fp, "fn": pos - tp, "recall": recall, "fpr": fpr, "precision": precision}


def _curve(rates: dict[str, np.ndarray], thresholds: np.ndarray) -> list[dict[str, float]]:
    idx = np.arange(len(thresholds))
    if len(idx) > CURVE_POINTS:
        idx = np.unique(np.linspace(0, len(idx) - 1, CURVE_POINTS).round().astype(int))
    return [{"threshold": round(float(thresholds[i]), 6), "recall": round(float(rates["recall"][i]), 6),
             "fpr": round(float(rates["fpr"][i]), 6), "precision": round(float(rates["precision"][i]), 6)}
            for i in idx]


def choose_operating_point(is_defect: np.ndarray, score: np.ndarray, config: OperatingPointConfig) -> OperatingPoint:
    """Pick the threshold on ``score`` (validation defect probabilities) for ``config.goal``.

    Goals: ``recall`` — highest specificity at recall >= target (ties: the lower threshold, more
    recall); ``balanced_accuracy`` — highest (recall + specificity) / 2; ``cost`` — fewest
    ``cost_ratio`` x missed defects + false alarms; ``fixed`` — 0.5.
    """
    is_defect = np.asarray(is_defect, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    candidates = np.unique(score)[::-1]  # descending
    rates = _rates(is_defect, score, candidates)
    specificity = 1.0 - rates["fpr"]
    balanced = (rates["recall"] + specificity) / 2
    goal_met = True
    if config.goal == "fixed" or not len(candidates):
        threshold = FIXED_THRESHOLD
    else:
        if config.goal == "recall":
            ok = rates["recall"] >= config.target_recall - 1e-12
            goal_met = bool(ok.any()) and bool(is_defect.any())
            # among the thresholds that reach the target, the most specific; ties -> the lowest threshold
            key = np.where(ok, specificity, -1.0)
            best = int(np.flatnonzero(key == key.max())[-1])
        elif config.goal == "balanced_accuracy":
            best = int(np.flatnonzero(balanced == balanced.max())[-1])
        else:  # cost
            cost = config.cost_ratio * rates["fn"] + rates["fp"]
            best = int(np.flatnonzero(cost == cost.min())[-1])
        below = candidates[best + 1] if best + 1 < len(candidates) else 0.0
        threshold = float((candidates[best] + below) / 2)
    at = _rates(is_defect, score, np.array([threshold]))
    spec = 1.0 - float(at["fpr"][0])
    recall = float(at["recall"][0])
    if config.goal == "recall":
        goal_met = goal_met and recall >= config.target_recall - 1e-12
    return OperatingPoint(
        threshold=threshold, goal=config.goal, target_recall=config.target_recall, cost_ratio=config.cost_ratio,
        recall=recall, specificity=spec, precision=float(at["precision"][0]), balanced_accuracy=(recall + spec) / 2,
        goal_met=goal_met, roc_auc=roc_auc(is_defect, score), curve=_curve(rates, candidates),
    )


def decide(probs: np.ndarray, defect_indices: Sequence[int], threshold: float) -> np.ndarray:
    """Class decisions: the likeliest defect class where the defect score reaches the threshold, else the
    likeliest ok class (for two classes: the defect class at the threshold, else the other one)."""
    defects = np.zeros(probs.shape[1], dtype=bool)
    defects[list(defect_indices)] = True
    best_defect = np.where(defects, probs, -np.inf).argmax(1)
    best_ok = np.where(defects, -np.inf, probs).argmax(1)
    return np.where(defect_probability(probs, defect_indices) >= threshold, best_defect, best_ok)


def metrics_at_threshold(y_true: np.ndarray, probs: np.ndarray, classes: list[str], defect_indices: Sequence[int],
                         threshold: float, loss: float | None = None) -> dict[str, Any]:
    metrics = classification_metrics(y_true, decide(probs, defect_indices, threshold), classes, loss=loss)
    metrics["threshold"] = float(threshold)
    return metrics
