"""The quality gate between a trained model and its aliases.

A model passes when, on the validation split at its operating point:

1. its balanced accuracy (mean per-class recall) reaches chance + margin, where chance is
   1 / classes. Balanced accuracy is the measure because every model that answers one class
   whatever the image — always-ok, always-majority — scores exactly 1 / classes, however uneven the
   classes are; plain accuracy would reward always-ok with 0.95 on a 5 %-defective product. The
   default margin 0.25 (0.75 for two classes) asks for more than a coin's worth of signal: at a
   recall of 0.99 it means the model must clear at least half of the good parts;
2. its recall goal (goal ``recall``) is met — which needs a validation split that holds defects.

A failing model gets no alias: with ``on_fail="fail"`` nothing is published and the job ends
FAILED; with ``publish_without_aliases`` it is published as a version nobody serves by default and
the job ends SUCCEEDED, the reason in its result. Either way the figures are in the job result (and
the manifest, when published).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.trainer.spec import GateConfig


@dataclass
class GateReport:
    passed: bool
    reason: str
    balanced_accuracy: float
    required_balanced_accuracy: float
    majority_accuracy: float
    accuracy: float
    recall_goal_met: bool
    on_fail: str
    aliases_set: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_gate(gate: GateConfig, val_at_op: dict[str, Any], operating_point: dict[str, Any]) -> GateReport:
    """The gate's verdict from the validation metrics at the operating point (``metrics["val@op"]``)."""
    support = [int(c["support"]) for c in val_at_op["per_class"]]
    samples = max(1, sum(support))
    present = max(1, sum(1 for s in support if s))
    required = 1.0 / present + gate.min_balanced_accuracy_margin
    balanced = float(val_at_op["balanced_accuracy"])
    recall_met = bool(operating_point.get("goal_met", True))
    reasons = []
    if balanced < required:
        reasons.append(f"balanced accuracy {balanced:.3f} on validation is below the {required:.3f} required "
                       f"(any always-one-class model scores {1.0 / present:.3f})")
    if not recall_met:
        reasons.append(f"defect recall {operating_point.get('recall', 0.0):.3f} on validation misses the goal "
                       f"{operating_point.get('target_recall', 0.0):.3f}")
    passed = gate.disabled or not reasons
    reason = "" if not reasons else "; ".join(reasons) + (" (gate disabled: aliases set anyway)" if gate.disabled
                                                           else "")
    return GateReport(passed=passed, reason=reason, balanced_accuracy=balanced, required_balanced_accuracy=required,
                      majority_accuracy=max(support) / samples, accuracy=float(val_at_op["accuracy"]),
                      recall_goal_met=recall_met, on_fail=gate.on_fail)
