"""Job specs: the queue's proto3-JSON JobSpec dict -> a validated internal JobConfig with thesis defaults.

The queue stores specs as ``json_format.MessageToDict(spec, preserving_proto_field_name=True)``:
snake_case keys, enum values by name, 64-bit integers as strings, unset scalars absent. This module
reads that dict without importing the generated proto code, so the worker depends only on plain data.

Validation happens twice: in the servicer at submit time (the caller sees the error) and again in
the worker (data may have changed since). Every problem is a domain error with a clear message:
InvalidArgument for bad values, PermissionDenied for a dataset outside the data roots, NotFound for
a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.datasets.imagefolder import ImageFolder, discover
from common.errors import InvalidArgument
from common.manifest import FreezeSpec
from common.models.weights import LITE0_PYPI, LITE0_TIMM_NAME
from common.models.zoo import ArchSpec, get_spec
from common.paths import resolve_under_roots
from common.registry import check_name
from services.trainer.class_roles import resolve_class_roles
from services.trainer.runtime import check_devices

# Thesis recipe (DESIGN.md): CrossEntropy, Adam lr 2e-5, weight decay 2.5e-4, 6 epochs, batch 32.
DEFAULT_LR = 2e-5
DEFAULT_WEIGHT_DECAY = 2.5e-4
DEFAULT_EPOCHS = 6
DEFAULT_BATCH_SIZE = 32
DEFAULT_VAL_FRACTION = 0.1
# Architectures trained from scratch need more epochs (the thesis trained Luna for 50).
DEFAULT_EPOCHS_BY_ARCH: dict[str, int] = {"luna": 50}

MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 8
MAX_LOADER_WORKERS = 64
MAX_LABELS = 64

WeightsKind = Literal["default", "hub", "file", "random", "named"]
ScheduleKind = Literal["constant", "cosine"]
PrecisionKind = Literal["auto", "fp32", "bf16", "fp16"]

_WEIGHTS = {"WEIGHTS_KIND_UNSPECIFIED": "default", "WEIGHTS_KIND_HUB": "hub", "WEIGHTS_KIND_FILE": "file",
            "WEIGHTS_KIND_RANDOM": "random", "WEIGHTS_KIND_NAMED": "named"}
_SCHEDULES = {"SCHEDULE_UNSPECIFIED": "constant", "SCHEDULE_CONSTANT": "constant", "SCHEDULE_COSINE": "cosine"}
_PRECISIONS = {"PRECISION_AUTO": "auto", "PRECISION_FP32": "fp32", "PRECISION_BF16": "bf16",
               "PRECISION_FP16": "fp16"}
_FREEZE_MODES = {"FREEZE_MODE_UNSPECIFIED": "unfrozen", "FREEZE_MODE_FROZEN": "frozen",
                 "FREEZE_MODE_PARTIAL": "partial", "FREEZE_MODE_UNFROZEN": "unfrozen"}


class WeightsConfig(BaseModel):
    kind: WeightsKind = "default"
    location: str = ""  # resolved file path (file) or source name (named)
    key_map: dict[str, str] = Field(default_factory=dict)


class RecipeConfig(BaseModel):
    """The optimisation recipe with every default filled in."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR  # backbone
    head_lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    group_lr: dict[str, float] = Field(default_factory=dict)
    schedule: ScheduleKind = "constant"
    warmup_epochs: float = 0.0
    early_stopping_patience: int = 0
    image_size: int = 224
    augment: bool = False
    seed: int = 0
    precision: PrecisionKind = "auto"
    val_fraction: float = DEFAULT_VAL_FRACTION
    devices: int = 1
    loader_workers: int = 0
    max_batches_per_epoch: int = 0


class JobConfig(BaseModel):
    """A validated job: what the worker trains and publishes."""

    model_name: str
    architecture: str
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    dataset_path: str  # resolved absolute path under a data root
    freeze: FreezeSpec = Field(default_factory=lambda: FreezeSpec(mode="unfrozen"))
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    publish_aliases: list[str] = Field(default_factory=list)
    defect_class: str = ""  # empty until the dataset's classes are known
    labels: dict[str, str] = Field(default_factory=dict)
    ok_classes: list[str] = Field(default_factory=list)  # resolved with the classes (services.trainer.class_roles)
    drop_test_duplicates: bool = False


# -- small readers -----------------------------------------------------------------------------

def _enum(table: Mapping[str, str], value: Any, field: str) -> str:
    if value is None:
        return next(iter(table.values()))
    if isinstance(value, int):  # numeric enum value
        names = list(table)
        if 0 <= value < len(names):
            return table[names[value]]
    if isinstance(value, str):
        if value in table:
            return table[value]
        if value.lower() in table.values():
            return value.lower()
    raise InvalidArgument(f"{field}: unknown value {value!r} (valid: {', '.join(table)})")


def _number(data: Mapping[str, Any], key: str, field: str, default: float | None = None) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidArgument(f"{field} must be finite, got {value!r}")
    return number


def _int(data: Mapping[str, Any], key: str, field: str) -> int:
    value = _number(data, key, field, 0)
    assert value is not None
    if value != int(value) or value < 0:
        raise InvalidArgument(f"{field} must be a non-negative integer, got {data.get(key)!r}")
    return int(value)


def _check_lr(value: float, field: str) -> float:
    if not 0.0 < value <= 1.0:
        raise InvalidArgument(f"{field} must be in (0, 1], got {value:g}")
    return value


# -- parts -------------------------------------------------------------------------------------

def parse_freeze(data: Mapping[str, Any] | None) -> FreezeSpec:
    """The FreezePolicy oneof: mode, fraction or prefixes; nothing set means unfrozen."""
    data = data or {}
    if "mode" in data:
        return FreezeSpec(mode=_enum(_FREEZE_MODES, data["mode"], "freeze.mode"))
    if "fraction" in data:
        fraction = _number(data, "fraction", "freeze.fraction")
        assert fraction is not None
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgument(f"freeze.fraction must be in [0, 1], got {fraction:g}")
        return FreezeSpec(fraction=fraction)
    if "prefixes" in data:
        prefixes = [str(p).strip() for p in (data["prefixes"] or {}).get("prefixes", [])]
        if not prefixes or any(not p for p in prefixes):
            raise InvalidArgument("freeze.prefixes must list at least one non-empty module prefix")
        return FreezeSpec(prefixes=prefixes)
    return FreezeSpec(mode="unfrozen")


def parse_weights(data: Mapping[str, Any] | None, data_roots: Sequence[Path]) -> WeightsConfig:
    data = data or {}
    kind = _enum(_WEIGHTS, data.get("kind"), "weights.kind")
    location = str(data.get("location", "")).strip()
    key_map = {str(k): str(v) for k, v in (data.get("key_map") or {}).items()}
    if kind == "file":
        if not location:
            raise InvalidArgument("weights.location must name a file for WEIGHTS_KIND_FILE")
        location = str(resolve_under_roots(location, data_roots))
    elif kind == "named" and location != LITE0_PYPI:
        raise InvalidArgument(f"weights.location {location!r} is not a known named source (valid: {LITE0_PYPI})")
    return WeightsConfig(kind=kind, location=location, key_map=key_map)  # type: ignore[arg-type]


def parse_recipe(data: Mapping[str, Any] | None, arch: ArchSpec) -> RecipeConfig:
    """Fill thesis defaults (and the architecture's epochs / input size) and reject absurd values."""
    data = data or {}
    epochs = _int(data, "epochs", "recipe.epochs") or DEFAULT_EPOCHS_BY_ARCH.get(arch.key, DEFAULT_EPOCHS)
    if not 1 <= epochs <= MAX_EPOCHS:
        raise InvalidArgument(f"recipe.epochs must be in [1, {MAX_EPOCHS}], got {epochs}")
    batch = _int(data, "batch_size", "recipe.batch_size") or DEFAULT_BATCH_SIZE
    if not 1 <= batch <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"recipe.batch_size must be in [1, {MAX_BATCH_SIZE}], got {batch}")
    lr = _check_lr(_number(data, "lr", "recipe.lr", DEFAULT_LR) or 0.0, "recipe.lr")
    head_lr = _check_lr(_number(data, "head_lr", "recipe.head_lr", lr) or 0.0, "recipe.head_lr")
    wd = _number(data, "weight_decay", "recipe.weight_decay", DEFAULT_WEIGHT_DECAY)
    assert wd is not None
    if not 0.0 <= wd < 1.0:
        raise InvalidArgument(f"recipe.weight_decay must be in [0, 1), got {wd:g}")
    group_lr: dict[str, float] = {}
    for name, value in (data.get("group_lr") or {}).items():
        field = f"recipe.group_lr[{name!r}]"
        group_lr[str(name)] = _check_lr(_number({"v": value}, "v", field) or 0.0, field)
    warmup = _number(data, "warmup_epochs", "recipe.warmup_epochs", 0.0) or 0.0
    if not 0.0 <= warmup <= epochs:
        raise InvalidArgument(f"recipe.warmup_epochs must be in [0, epochs={epochs}], got {warmup:g}")
    val_fraction = _number(data, "val_fraction", "recipe.val_fraction", DEFAULT_VAL_FRACTION)
    assert val_fraction is not None
    if not 0.0 < val_fraction <= 0.5:
        raise InvalidArgument(f"recipe.val_fraction must be in (0, 0.5], got {val_fraction:g}")
    image_size = _int(data, "image_size", "recipe.image_size") or arch.input_size
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise InvalidArgument(f"recipe.image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    devices = _int(data, "devices", "recipe.devices") or 1
    check_devices(devices)  # on the validating host's default device: GPUs there, else CPU processes
    loader_workers = _int(data, "loader_workers", "recipe.loader_workers")
    if loader_workers > MAX_LOADER_WORKERS:
        raise InvalidArgument(f"recipe.loader_workers must be at most {MAX_LOADER_WORKERS}, got {loader_workers}")
    return RecipeConfig(
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        head_lr=head_lr,
        weight_decay=wd,
        group_lr=group_lr,
        schedule=_enum(_SCHEDULES, data.get("schedule"), "recipe.schedule"),  # type: ignore[arg-type]
        warmup_epochs=warmup,
        early_stopping_patience=_int(data, "early_stopping_patience", "recipe.early_stopping_patience"),
        image_size=image_size,
        augment=bool(data.get("augment", False)),
        seed=_int(data, "seed", "recipe.seed"),
        precision=_enum(_PRECISIONS, data.get("precision"), "recipe.precision"),  # type: ignore[arg-type]
        val_fraction=val_fraction,
        devices=devices,
        loader_workers=loader_workers,
        max_batches_per_epoch=_int(data, "max_batches_per_epoch", "recipe.max_batches_per_epoch"),
    )


def inspect_dataset(path: str, data_roots: Sequence[Path]) -> tuple[Path, ImageFolder]:
    """Resolve the dataset under the data roots and discover it (empty / single-class sets are rejected)."""
    if not path:
        raise InvalidArgument("dataset_path is required")
    root = resolve_under_roots(path, data_roots)
    if not root.is_dir():
        raise InvalidArgument(f"dataset_path {path!r} is not a folder")
    return root, discover(root)


# -- the whole spec ----------------------------------------------------------------------------

def parse_job_spec(data: Mapping[str, Any], data_roots: Sequence[Path], *, check_dataset: bool = True) -> JobConfig:
    """Validate a proto3-JSON JobSpec dict into a JobConfig.

    With ``check_dataset`` the dataset is discovered (classes, images) and the defect class resolved.

    Raises:
        InvalidArgument: unknown architecture, absurd hyperparameters, bad names, empty or
            single-class dataset, unknown defect or ok classes.
        PermissionDenied: dataset (or weights file) outside the data roots.
        NotFound: dataset (or weights file) missing.
    """
    architecture = str(data.get("architecture", "")).strip()
    if not architecture:
        raise InvalidArgument("architecture is required")
    arch = get_spec(architecture)
    model_name = str(data.get("model_name", "")).strip() or architecture
    check_name("model name", model_name)
    aliases = [check_name("alias", str(a)) for a in data.get("publish_aliases", [])]
    labels = {str(k): str(v) for k, v in (data.get("labels") or {}).items()}
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels, got {len(labels)}")
    recipe = parse_recipe(data.get("recipe"), arch)
    freeze = parse_freeze(data.get("freeze"))
    weights = parse_weights(data.get("weights"), data_roots)
    if weights.kind == "named" and arch.timm_name != LITE0_TIMM_NAME:
        raise InvalidArgument(f"weights {weights.location!r} fit the architecture 'efficientnet_lite0' "
                              f"({LITE0_TIMM_NAME}) only, not {architecture!r}")
    dataset_path = str(data.get("dataset_path", "")).strip()
    defect_class = str(data.get("defect_class", "")).strip()
    ok_classes = [str(c).strip() for c in data.get("ok_classes", [])]
    if check_dataset:
        root, folder = inspect_dataset(dataset_path, data_roots)
        dataset_path = str(root)
        defect_class, ok_classes = resolve_class_roles(folder.classes, defect_class, ok_classes)
    elif not dataset_path:
        raise InvalidArgument("dataset_path is required")
    return JobConfig(
        model_name=model_name,
        architecture=architecture,
        weights=weights,
        dataset_path=dataset_path,
        freeze=freeze,
        recipe=recipe,
        publish_aliases=aliases,
        defect_class=defect_class,
        labels=labels,
        ok_classes=ok_classes,
        drop_test_duplicates=bool(data.get("drop_test_duplicates", False)),
    )
