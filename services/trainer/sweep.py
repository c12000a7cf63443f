"""Sweeps: backbones × freeze-policy arms as child jobs, closed by one comparison table.

`expand_sweep` turns a SweepSpec dict (proto3 JSON) into child JobSpec dicts; the children run as
ordinary jobs. When the last child ends, `on_child_finished` (called by whichever worker ended it)
closes the parent exactly once: SUCCEEDED when at least one child succeeded, else FAILED, with one
row per child (architecture, arm, metrics per split, trainable parameters, model, cosine to the
initial weights) and the pairwise cosine similarities between the fine-tuned models of the same
architecture (different arms start from the same weights, so the comparison means something).
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
import time
from typing import Any

from common.errors import InvalidArgument
from common.jobqueue import FAILED, SUCCEEDED, TERMINAL, JobQueue, JobRecord
from common.metrics import cosine_similarity
from common.registry import Registry
from services.trainer.spec import parse_freeze

log = logging.getLogger(__name__)

MAX_CHILDREN = 100
ARM_LABEL = "sweep_arm"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._-") or "x"


def expand_sweep(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Child JobSpec dicts: the base with architecture, freeze and learning rates replaced per child."""
    base = dict(sweep.get("base") or {})
    architectures = [str(a).strip() for a in sweep.get("architectures") or []] or [str(base.get("architecture", ""))]
    if not all(architectures):
        raise InvalidArgument("sweep.architectures must name at least one architecture (or set base.architecture)")
    arms = list(sweep.get("arms") or []) or [{"freeze": base.get("freeze") or {}}]
    if len(architectures) * len(arms) > MAX_CHILDREN:
        raise InvalidArgument(f"a sweep may have at most {MAX_CHILDREN} children, "
                              f"got {len(architectures)} × {len(arms)}")
    labels = [str(arm.get("label", "")).strip() or parse_freeze(arm.get("freeze")).describe() for arm in arms]
    if len(set(labels)) != len(labels):
        raise InvalidArgument(f"sweep arms need distinct labels, got {labels}")
    if len(set(architectures)) != len(architectures):
        raise InvalidArgument(f"sweep.architectures has duplicates: {architectures}")
    name = str(base.get("model_name", "")).strip() or "sweep"
    children = []
    for arch, (arm, label) in itertools.product(architectures, zip(arms, labels, strict=True)):
        child = copy.deepcopy(base)
        child["architecture"] = arch
        child["freeze"] = copy.deepcopy(arm.get("freeze") or {})
        recipe = child.setdefault("recipe", {})
        for key in ("lr", "head_lr"):
            if key in arm:
                recipe[key] = arm[key]
        child["labels"] = {**(base.get("labels") or {}), ARM_LABEL: label}
        child["model_name"] = _slug(f"{name}-{arch}-{label}")[:100]
        children.append(child)
    return children


def _row(child: JobRecord) -> dict[str, Any]:
    """One SweepRow (proto3-JSON shape)."""
    spec = child.spec or {}
    result = child.result or {}
    row: dict[str, Any] = {
        "job_id": child.job_id,
        "architecture": spec.get("architecture", ""),
        "arm": (spec.get("labels") or {}).get(ARM_LABEL, ""),
        "state": child.state,
        "metrics": result.get("metrics", []),
        "trainable_params": child.trainable_params,
        "cosine_to_initial": result.get("cosine_to_initial", 0.0),
    }
    if result.get("model"):
        row["model"] = result["model"]
    return row


def _pairwise(rows: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """Cosine similarity between the published models of each architecture's arms."""
    out = []
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("model"):
            by_arch.setdefault(row["architecture"], []).append(row)
    for arch, members in by_arch.items():
        for a, b in itertools.combinations(members, 2):
            try:
                sa = registry.load_state_dict(a["model"]["name"], int(a["model"]["version"]))
                sb = registry.load_state_dict(b["model"]["name"], int(b["model"]["version"]))
                cosine, compared, _ = cosine_similarity(sa, sb)
            except Exception as exc:  # noqa: BLE001 - a missing model leaves its pair out, logged
                log.warning("sweep: cannot compare %s and %s: %s", a["job_id"], b["job_id"], exc)
                continue
            out.append({"architecture": arch, "a": a["arm"], "b": b["arm"], "cosine_similarity": cosine,
                        "compared_tensors": compared})
    return out


def comparison_table(rows: list[dict[str, Any]], pairwise: list[dict[str, Any]]) -> str:
    """A plain-text table for the parent's event stream (test metrics when present, else val)."""
    lines = [f"{'architecture':<24} {'arm':<16} {'state':<10} {'split':<5} {'acc':>7} {'prec_w':>7} "
             f"{'rec_w':>7} {'f1_w':>7} {'trainable':>11} {'cos_init':>8}"]
    for row in rows:
        metrics = {m.get("split"): m for m in row["metrics"]}
        m = metrics.get("test") or metrics.get("val") or {}
        lines.append(
            f"{row['architecture']:<24} {row['arm']:<16} {row['state']:<10} {m.get('split', '-'):<5} "
            f"{m.get('accuracy', 0):>7.4f} {m.get('precision_weighted', 0):>7.4f} {m.get('recall_weighted', 0):>7.4f} "
            f"{m.get('f1_weighted', 0):>7.4f} {row['trainable_params']:>11,} {row['cosine_to_initial']:>8.4f}"
        )
    for pair in pairwise:
        lines.append(f"cosine({pair['architecture']}: {pair['a']} vs {pair['b']}) = {pair['cosine_similarity']:.6f}")
    return "\n".join(lines)


def on_child_finished(queue: JobQueue, registry: Registry, child: JobRecord) -> JobRecord | None:
    """Close the child's sweep when this was its last running child; returns the closed parent or None."""
    if not child.parent_job_id:
        return None
    parent = queue.get(child.parent_job_id)
    if parent.state in TERMINAL:
        return None
    kids = [queue.get(job_id) for job_id in parent.child_job_ids]
    if any(k.state not in TERMINAL for k in kids):
        return None
    # Two workers may end the last two children at the same moment: only one closes the parent.
    if not queue.r.set(f"{queue.p}:job:{parent.job_id}:sweep-closed", "1", nx=True, ex=queue.history_ttl):
        return None
    rows = [_row(k) for k in kids]
    pairwise = _pairwise(rows, registry)
    state = SUCCEEDED if any(k.state == SUCCEEDED for k in kids) else FAILED
    now = time.time()
    result = {"sweep": rows, "pairwise_cosine": pairwise, "seconds": now - parent.created_at}
    error = "" if state == SUCCEEDED else "every child job failed"
    parent = queue.update(parent.job_id, state=state, finished_at=now, result=result, error=error)
    queue.emit(parent.job_id, "message", {"message": "sweep finished\n" + comparison_table(rows, pairwise)}, state)
    queue.emit(parent.job_id, "finished", {"job": parent.model_dump()}, state)
    return parent
