"""Manifest types -> the shared zdm.v1 common messages (ModelInfo, FreezePolicy, SplitMetrics).

One converter for every service that reports a model: the trainer's registry RPCs and the
classifier's ServedModel give the same ModelInfo for the same manifest.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import json_format

from common.manifest import FreezeSpec, Manifest
from protos.zdm.v1 import common_pb2

log = logging.getLogger(__name__)

FREEZE_MODES = {
    "frozen": common_pb2.FREEZE_MODE_FROZEN,
    "partial": common_pb2.FREEZE_MODE_PARTIAL,
    "unfrozen": common_pb2.FREEZE_MODE_UNFROZEN,
}


def freeze_to_proto(freeze: FreezeSpec) -> common_pb2.FreezePolicy:
    """The policy as its FreezePolicy oneof; nothing set means unfrozen (as ``FreezeSpec.describe``)."""
    if freeze.mode:
        return common_pb2.FreezePolicy(mode=FREEZE_MODES.get(freeze.mode, common_pb2.FREEZE_MODE_UNSPECIFIED))
    if freeze.fraction is not None:
        return common_pb2.FreezePolicy(fraction=freeze.fraction)
    if freeze.prefixes:
        return common_pb2.FreezePolicy(prefixes=common_pb2.ModulePrefixes(prefixes=freeze.prefixes))
    return common_pb2.FreezePolicy(mode=common_pb2.FREEZE_MODE_UNFROZEN)


def split_metrics_to_proto(split: str, values: dict[str, Any]) -> common_pb2.SplitMetrics:
    """A metrics dict (the keys of SplitMetrics; None left out, unknown keys ignored) for one split.

    Values that do not fit the message are logged and dropped: the full dict stays in manifest_json.
    """
    message = common_pb2.SplitMetrics()
    try:
        json_format.ParseDict({k: v for k, v in values.items() if v is not None}, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        log.warning("metrics of split %r do not fit SplitMetrics (%s); see manifest_json", split, exc)
        message = common_pb2.SplitMetrics()
    message.split = split
    return message


def manifest_to_info(manifest: Manifest, aliases: list[str]) -> common_pb2.ModelInfo:
    """The manifest as a ModelInfo message (every field; manifest_json carries the rest)."""
    pre, exp = manifest.preprocessing, manifest.explanation
    return common_pb2.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        aliases=aliases,
        architecture=manifest.architecture,
        classes=manifest.classes,
        defect_class=manifest.defect_class,
        preprocessing=common_pb2.Preprocessing(image_size=pre.image_size, mean=pre.mean, std=pre.std, channels=pre.channels),
        freeze=freeze_to_proto(manifest.freeze),
        metrics=[split_metrics_to_proto(split, values) for split, values in manifest.metrics.items()],
        explanation=common_pb2.ExplanationDefaults(
            method=exp.method, layer=exp.layer, threshold=exp.threshold, normalization=exp.normalization,
            region=exp.region,
        ),
        dataset_fingerprint=manifest.dataset_fingerprint,
        weights_source=manifest.weights_source,
        trainable_params=manifest.trainable_params,
        total_params=manifest.total_params,
        job_id=manifest.job_id,
        created_at=manifest.created_at,
        manifest_json=manifest.model_dump_json(),
        ok_classes=[c for i, c in enumerate(manifest.classes) if i not in set(manifest.defect_indices)],
    )
