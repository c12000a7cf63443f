"""Operating point on validation scores, the quality gate's verdict, and the presets' data-driven choices."""

from __future__ import annotations

import numpy as np
import pytest

from common.datasets.imagefolder import discover
from common.datasets.synthetic import Hardness, generate_dataset
from services.trainer import recipes
from services.trainer.gate import evaluate_gate
from services.trainer.operating_point import choose_operating_point, decide, metrics_at_threshold, roc_auc
from services.trainer.spec import GateConfig, OperatingPointConfig

# 4 defects, 6 ok; one ok image (0.7) scores above the weakest defect (0.6)
IS_DEFECT = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
SCORE = np.array([0.95, 0.9, 0.8, 0.6, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05])


def test_recall_goal_takes_the_most_specific_threshold_that_catches_every_defect() -> None:
    point = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="recall", target_recall=0.99))
    assert point.recall == 1.0 and point.specificity == pytest.approx(5 / 6) and point.goal_met
    assert 0.5 < point.threshold < 0.6  # midway between the weakest defect and the next lower score
    assert point.threshold == pytest.approx(0.55)
    lower = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="recall", target_recall=0.75))
    assert lower.recall == 0.75 and lower.specificity == 1.0 and 0.7 < lower.threshold < 0.8


def test_other_goals() -> None:
    fixed = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="fixed"))
    assert fixed.threshold == 0.5 and fixed.recall == 1.0
    balanced = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="balanced_accuracy"))
    assert balanced.balanced_accuracy == pytest.approx((1 + 5 / 6) / 2)
    # a false alarm costs as much as a missed defect: both thresholds around 0.6/0.7 cost 1 -> the lower one
    cheap = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="cost", cost_ratio=1.0))
    assert cheap.recall == 1.0
    # false alarms 100x worse than misses: flag only what no ok image reaches
    strict = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="cost", cost_ratio=0.01))
    assert strict.specificity == 1.0 and strict.threshold > 0.7


def test_curve_and_auc() -> None:
    point = choose_operating_point(IS_DEFECT, SCORE, OperatingPointConfig(goal="recall"))
    assert roc_auc(IS_DEFECT, SCORE) == pytest.approx(23 / 24) == point.roc_auc
    thresholds = [p["threshold"] for p in point.curve]
    assert thresholds == sorted(thresholds, reverse=True) and len(point.curve) == len(SCORE)
    recalls = [p["recall"] for p in point.curve]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0 and point.curve[-1]["fpr"] == 1.0
    assert roc_auc(np.array([1, 0], bool), np.array([0.3, 0.3])) == 0.5


def test_no_defect_in_validation_misses_the_recall_goal() -> None:
    point = choose_operating_point(np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4]), OperatingPointConfig())
    assert point.goal == "fixed"  # the bare config: the thesis's fixed 0.5
    recall_goal = choose_operating_point(np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4]),
                                         OperatingPointConfig(goal="recall"))
    assert not recall_goal.goal_met


def test_decisions_and_metrics_at_a_threshold() -> None:
    probs = np.array([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    assert decide(probs, [0], 0.25).tolist() == [0, 0, 1]
    m = metrics_at_threshold(np.array([0, 1, 1]), probs, ["def", "ok"], [0], 0.25)
    assert m["threshold"] == 0.25 and m["confusion"] == [1, 0, 1, 1]


def test_several_defect_types_decide_on_their_summed_probability() -> None:
    # classes: crack, chip (defects), ok: no single defect class reaches 0.5, together they do
    probs = np.array([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.05, 0.5, 0.45]])
    assert decide(probs, [0, 1], 0.5).tolist() == [0, 2, 1]
    assert decide(probs, [0, 1], 0.7).tolist() == [2, 2, 2]


def _val_metrics(y_true, y_pred):
    from common.metrics import classification_metrics

    return classification_metrics(y_true, y_pred, ["def", "ok"])


def test_gate_rejects_always_ok_on_uneven_classes_and_passes_a_useful_model() -> None:
    y = [0] * 5 + [1] * 95
    always_ok = _val_metrics(y, [1] * 100)
    report = evaluate_gate(GateConfig(), always_ok, {"goal_met": True})
    assert not report.passed and report.balanced_accuracy == 0.5 and report.required_balanced_accuracy == 0.75
    assert report.majority_accuracy == 0.95 and report.accuracy == 0.95 and "0.500" in report.reason
    useful = _val_metrics(y, [0] * 5 + [0] * 10 + [1] * 85)  # every defect, 10 false alarms
    assert evaluate_gate(GateConfig(), useful, {"goal_met": True}).passed
    missed = evaluate_gate(GateConfig(), useful, {"goal_met": False, "recall": 0.8, "target_recall": 0.99})
    assert not missed.passed and "misses the goal 0.990" in missed.reason
    off = evaluate_gate(GateConfig(disabled=True), always_ok, {"goal_met": True})
    assert off.passed and "gate disabled" in off.reason


def test_class_weights_only_for_uneven_classes() -> None:
    assert recipes.class_weights([50, 50], "auto") is None
    assert recipes.class_weights([10, 90], "auto") == pytest.approx([5.0, 100 / 180])
    assert recipes.class_weights([50, 50], "weighted") == pytest.approx([1.0, 1.0])
    assert recipes.class_weights([10, 90], "none") is None


def test_auto_epochs_and_image_size_follow_the_data(tmp_path) -> None:
    assert recipes.auto_epochs(6000) == 3 and recipes.auto_epochs(0) == 3
    assert recipes.auto_epochs(100) == 30 and recipes.auto_epochs(10**6) == 3
    big = generate_dataset(tmp_path / "big", train_per_class=4, test_per_class=1, size=400)
    choice = recipes.auto_image_size(discover(big).train, big, "def_front")
    assert choice.median_short_side == 400 and choice.image_size == 256  # the CPU cap
    # defects at 15 % of their usual size: the side grows until the median defect spans enough pixels
    small = generate_dataset(tmp_path / "small", train_per_class=4, test_per_class=1, size=400,
                             hardness=Hardness(defect_scale=0.15))
    choice = recipes.auto_image_size(discover(small).train, small, "def_front")
    assert choice.median_defect_fraction is not None and choice.median_defect_fraction < 0.04
    assert choice.image_size == 384 and "median defect" in choice.reason  # capped at MAX_DEFECT_IMAGE_SIZE
    tiny = generate_dataset(tmp_path / "tiny", train_per_class=2, test_per_class=1, size=40)
    assert recipes.auto_image_size(discover(tiny).train, tiny, "def_front").image_size == 64  # the floor
