"""Resumable per-epoch training checkpoints: tensors in safetensors, everything else in JSON.

Layout: ``<checkpoint_dir>/<job_id>/epoch-<NNNN>/{state.safetensors, state.json}``. An epoch folder
is written under a temporary name and renamed into place, so a reader sees a whole checkpoint or
none; older epochs are removed after the newer one is in place. Nothing is ever unpickled.

Tensor keys: ``model.<name>`` (the full state dict, buffers included), ``optim.<param index>.<name>``
(per-parameter optimizer state such as Adam's moments and step), ``best.<name>`` (the best weights
so far when early stopping keeps them) and ``rng.<name>`` (generator states as uint8 tensors).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
FORMAT = 1


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``epoch`` completed epochs."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict (tensors restored)
    scheduler: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)  # see capture_rng / restore_rng
    best_model: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- RNG state ---------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (CPU and every CUDA device)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np.asarray(np_state["state"]["key"]).tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (missing entries are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({
            "bit_generator": s["bit_generator"],
            "state": {"key": np.asarray(s["key"], dtype=np.uint32), "pos": s["pos"]},
            "has_gauss": s["has_gauss"],
            "gauss": s["gauss"],
        })
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _split_rng(rng: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Tensors (torch generator states) go to safetensors, the rest to JSON."""
    plain: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in rng.items():
        if isinstance(value, torch.Tensor):
            tensors[f"rng.{name}"] = value
        elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
            for i, v in enumerate(value):
                tensors[f"rng.{name}.{i}"] = v
            plain[name] = {"tensor_list": len(value)}
        else:
            plain[name] = value
    return plain, tensors


def _join_rng(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    rng: dict[str, Any] = {}
    for name, value in plain.items():
        if isinstance(value, dict) and set(value) == {"tensor_list"}:
            rng[name] = [tensors[f"rng.{name}.{i}"] for i in range(value["tensor_list"])]
        else:
            rng[name] = value
    for key, tensor in tensors.items():
        name = key[len("rng."):]
        if "." not in name:
            rng[name] = tensor
    return rng


# -- optimizer state ---------------------------------------------------------------------------

def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    plain_state: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for index, entries in state["state"].items():
        plain_entries: dict[str, Any] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
                plain_entries[name] = {"tensor": True}
            else:
                plain_entries[name] = value
        plain_state[str(index)] = plain_entries
    return {"state": plain_state, "param_groups": state["param_groups"]}, tensors


def _join_optimizer(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for index, entries in plain["state"].items():
        state[int(index)] = {
            name: tensors[f"optim.{index}.{name}"] if isinstance(v, dict) and v.get("tensor") else v
            for name, v in entries.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


# -- files -------------------------------------------------------------------------------------

def _cpu_tensors(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    return {f"{prefix}{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def job_dir(root: Path, job_id: str) -> Path:
    return Path(root) / job_id


def save(root: Path, job_id: str, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically as the job's newest epoch and drop older ones; returns its folder."""
    folder = job_dir(root, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    optim_plain, optim_tensors = _split_optimizer(checkpoint.optimizer)
    rng_plain, rng_tensors = _split_rng(checkpoint.rng)
    tensors = _cpu_tensors("model.", checkpoint.model)
    tensors.update(_cpu_tensors("", optim_tensors))
    tensors.update(_cpu_tensors("", rng_tensors))
    if checkpoint.best_model is not None:
        tensors.update(_cpu_tensors("best.", checkpoint.best_model))
    meta = {
        "format": FORMAT,
        "epoch": checkpoint.epoch,
        "optimizer": optim_plain,
        "scheduler": checkpoint.scheduler,
        "early_stopping": checkpoint.early_stopping,
        "history": checkpoint.history,
        "rng": rng_plain,
        "has_best": checkpoint.best_model is not None,
        "extra": checkpoint.extra,
    }
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / TENSORS_FILE))
        with open(tmp / STATE_FILE, "w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        target = folder / f"epoch-{checkpoint.epoch:04d}"
        if target.exists():  # a rerun of the same epoch (e.g. after a retry) replaces it
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for epoch, path in _epochs(folder):
        if epoch < checkpoint.epoch:
            shutil.rmtree(path, ignore_errors=True)
    log.debug("checkpoint of epoch %d written to %s", checkpoint.epoch, target)
    return target


def _epochs(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _EPOCH_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file() and (path / TENSORS_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_epoch(root: Path, job_id: str) -> int:
    """Epochs completed in the newest checkpoint; 0 when there is none."""
    epochs = _epochs(job_dir(root, job_id))
    return epochs[-1][0] if epochs else 0


def load(root: Path, job_id: str) -> Checkpoint | None:
    """The job's newest checkpoint, or None."""
    epochs = _epochs(job_dir(root, job_id))
    if not epochs:
        return None
    _epoch, path = epochs[-1]
    meta = json.loads((path / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        log.warning("ignoring checkpoint %s of unknown format %r", path, meta.get("format"))
        return None
    tensors = load_file(str(path / TENSORS_FILE))
    groups: dict[str, dict[str, torch.Tensor]] = {"model.": {}, "optim.": {}, "rng.": {}, "best.": {}}
    for key, tensor in tensors.items():
        for prefix, bucket in groups.items():
            if key.startswith(prefix):
                bucket[key if prefix in ("optim.", "rng.") else key[len(prefix):]] = tensor
                break
    return Checkpoint(
        epoch=int(meta["epoch"]),
        model=groups["model."],
        optimizer=_join_optimizer(meta["optimizer"], groups["optim."]),
        scheduler=meta["scheduler"],
        early_stopping=meta["early_stopping"],
        history=meta["history"],
        rng=_join_rng(meta["rng"], groups["rng."]),
        best_model=groups["best."] if meta.get("has_best") else None,
        extra=meta.get("extra", {}),
    )


def remove(root: Path, job_id: str) -> None:
    """Delete every checkpoint of a job (after it ended for good)."""
    shutil.rmtree(job_dir(root, job_id), ignore_errors=True)
