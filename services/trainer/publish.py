"""Publish a finished fit: weights + manifest (+ timm config.json, history.json) into the registry, once.

The manifest carries everything consumers need (architecture, classes, preprocessing, freeze policy,
recipe, metrics, explanation defaults, ...). Where the network is timm's, the version folder also
holds timm's ``config.json`` (written by timm's own exporter), so
``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds the fine-tuned model.

Publishing is idempotent per job: a retried job whose earlier attempt already published (and then
died before acknowledging) finds that version instead of adding another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import redis
from torch import nn

from common import model_events
from common.manifest import FreezeSpec, Manifest, Preprocessing, VerificationInfo
from common.models.zoo import ArchSpec
from common.registry import Registry
from common.verification import VERIFICATION_FILE
from services.trainer.gate import GateReport
from services.trainer.spec import JobConfig
from services.trainer.training import FitResult

log = logging.getLogger(__name__)

TIMM_CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


def build_manifest(config: JobConfig, result: FitResult, job_id: str, gate: GateReport | None = None,
                   verification: VerificationInfo | None = None) -> Manifest:
    recipe = config.recipe.model_dump()
    recipe.update({
        "loss": "cross_entropy" if result.class_weights is None else "class_weighted_cross_entropy",
        "class_weights": result.class_weights,
        "train_class_counts": result.class_counts,
        "operating_point_spec": config.operating_point.model_dump(),
        "gate_spec": config.gate.model_dump(),
        "optimizer": "adam",
        "weights": config.weights.model_dump(),
        "runtime": result.runtime,
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 3),
        "resumed_from_epoch": result.resumed_from_epoch,
        "dataset_path": config.dataset_path,
        "drop_test_duplicates": config.drop_test_duplicates,
    })
    return Manifest(
        name=config.model_name,
        architecture=result.arch.key,
        timm_name=result.arch.timm_name,
        classes=result.classes,
        defect_class=result.defect_class,
        preprocessing=Preprocessing(image_size=result.image_size, mean=result.mean, std=result.std, channels=3),
        freeze=FreezeSpec.model_validate(config.freeze.model_dump()),
        recipe=recipe,
        metrics=result.metrics,
        explanation=result.arch.explanation.model_copy(),
        dataset_fingerprint=result.fingerprint,
        weights_source=result.weights_source,
        trainable_params=result.freeze.trainable,
        total_params=result.freeze.total,
        job_id=job_id,
        cosine_to_initial=result.cosine_to_initial,
        labels=dict(config.labels),
        ok_classes=list(config.ok_classes),
        dataset_check=dict(result.extra.get("dataset_check", {})),
        preset=config.recipe.preset,
        operating_point=result.operating_point or None,
        gate=None if gate is None else gate.as_dict(),
        verification=verification,
    )


def timm_config(model: nn.Module, arch: ArchSpec, image_size: int, mean: list[float], std: list[float]) -> bytes:
    """timm's config.json for the fine-tuned model (its own exporter, so timm's local-dir loader reads it)."""
    from timm.models._hub import save_config_for_hf  # timm's exporter behind save_for_hf

    data_config = {"input_size": (3, image_size, image_size), "mean": tuple(mean), "std": tuple(std),
                   "crop_pct": 1.0, "interpolation": "bilinear"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TIMM_CONFIG_FILE
        save_config_for_hf(model, str(path), model_args=dict(arch.timm_kwargs), data_config=data_config)
        return path.read_bytes()


def find_published(registry: Registry, name: str, job_id: str) -> Manifest | None:
    """The version an earlier attempt of ``job_id`` published, if any."""
    for version in reversed(registry.versions(name)):
        manifest = registry.manifest(name, version)
        if manifest.job_id == job_id:
            return manifest
    return None


def publish(registry: Registry, client: redis.Redis | None, prefix: str, config: JobConfig, result: FitResult,
            job_id: str, gate: GateReport | None = None) -> tuple[Manifest, bool]:
    """Publish (or find the earlier publication of) a job's model; returns (manifest, newly_published).

    The job's aliases are pointed at the version only when ``gate`` is None or passed.
    """
    aliases = list(config.publish_aliases) if gate is None or gate.passed else []
    if gate is not None:
        gate.aliases_set = bool(aliases)
    existing = find_published(registry, config.model_name, job_id)
    if existing is not None:
        log.info("job %s was already published as %s v%d", job_id, existing.name, existing.version)
        for alias in aliases:
            registry.set_alias(existing.name, alias, existing.version)
        return existing, False
    extra = {HISTORY_FILE: json.dumps(result.history).encode()}
    if result.arch.timm_name and hasattr(result.model, "pretrained_cfg"):
        extra[TIMM_CONFIG_FILE] = timm_config(result.model, result.arch, result.image_size, result.mean, result.std)
    verification = None
    if result.verification is not None:
        extra[VERIFICATION_FILE] = data = result.verification.to_bytes()
        verification = VerificationInfo(file=VERIFICATION_FILE, sha256=hashlib.sha256(data).hexdigest(),
                                        count=len(result.verification),
                                        class_counts=result.verification.class_counts(result.classes))
    manifest = registry.publish(build_manifest(config, result, job_id, gate, verification), result.state_dict(),
                                extra_files=extra, aliases=aliases)
    log.info("published %s v%d (job %s)", manifest.name, manifest.version, job_id)
    if client is not None:
        model_events.announce(client, prefix, manifest.name, manifest.version)
    return manifest, True
