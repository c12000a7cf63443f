"""Job specs: the queue's proto3-JSON JobSpec dict -> a validated internal JobConfig, from a named preset.

The queue stores specs as ``json_format.MessageToDict(spec, preserving_proto_field_name=True)``:
snake_case keys, enum values by name, 64-bit integers as strings, unset scalars absent. Enum names
map to the words used here (``SCHEDULE_COSINE`` -> ``cosine``) through the generated descriptors.

The recipe starts from a preset (``services.trainer.recipes``: ``default`` unless the job names
``thesis``); every field the job sets overrides it; what the preset leaves to the data (epochs,
input size, warm-up of ``default``) is decided here once the dataset is known.

This module is the one validator: the servicer calls it at submit time (the caller sees the error)
and the worker again (data may have changed since). Every problem is a domain error with a clear
message: InvalidArgument for bad values, PermissionDenied for a dataset outside the data roots,
NotFound for a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from pydantic import BaseModel, Field

from common.datasets.imagefolder import ImageFolder, discover
from common.errors import InvalidArgument
from common.manifest import FreezeSpec
from common.models.weights import LITE0_PYPI, LITE0_TIMM_NAME
from common.models.zoo import ArchSpec, get_spec
from common.paths import resolve_under_roots
from common.registry import check_name
from protos.zdm.v1 import common_pb2, trainer_pb2
from services.trainer import recipes
from services.trainer.class_roles import resolve_class_roles
from services.trainer.runtime import check_devices

_THESIS = recipes.PRESETS["thesis"]
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TARGET_RECALL = 0.99
DEFAULT_COST_RATIO = 20.0
DEFAULT_GATE_MARGIN = 0.25

MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 8
MAX_LOADER_WORKERS = 64
MAX_LABELS = 64

WeightsKind = Literal["default", "hub", "file", "random", "named"]
ScheduleKind = Literal["constant", "cosine"]
PrecisionKind = Literal["auto", "fp32", "bf16", "fp16"]
ClassBalanceKind = Literal["none", "auto", "weighted"]
ThresholdGoalKind = Literal["recall", "balanced_accuracy", "cost", "fixed"]
GateActionKind = Literal["fail", "publish_without_aliases"]


def enum_words(enum: EnumTypeWrapper, prefix: str) -> dict[str, str]:
    """Proto enum value name -> word (``SCHEDULE_COSINE`` -> ``cosine``), from the generated descriptor."""
    return {value.name: value.name.removeprefix(prefix).lower() for value in enum.DESCRIPTOR.values}


class WeightsConfig(BaseModel):
    kind: WeightsKind = "default"
    location: str = ""  # resolved file path (file) or source name (named)
    key_map: dict[str, str] = Field(default_factory=dict)


class RecipeConfig(BaseModel):
    """The optimisation recipe with every value resolved (constructed bare: the thesis's numbers)."""

    preset: str = "thesis"
    epochs: int = _THESIS["epochs"]
    batch_size: int = _THESIS["batch_size"]
    lr: float = _THESIS["lr"]  # backbone
    head_lr: float = _THESIS["head_lr"]
    weight_decay: float = _THESIS["weight_decay"]
    group_lr: dict[str, float] = Field(default_factory=dict)
    schedule: ScheduleKind = _THESIS["schedule"]
    warmup_epochs: float = _THESIS["warmup_epochs"]
    early_stopping_patience: int = _THESIS["early_stopping_patience"]
    image_size: int = 224
    augment: bool = _THESIS["augment"]
    class_balance: ClassBalanceKind = _THESIS["class_balance"]
    seed: int = 0
    precision: PrecisionKind = "auto"
    val_fraction: float = DEFAULT_VAL_FRACTION
    devices: int = 1
    loader_workers: int = 0
    max_batches_per_epoch: int = 0
    # How the values the preset leaves to the data were decided (field -> reason).
    decided_from_data: dict[str, str] = Field(default_factory=dict)


class OperatingPointConfig(BaseModel):
    """How the decision threshold is chosen on the validation split."""

    goal: ThresholdGoalKind = "fixed"
    target_recall: float = DEFAULT_TARGET_RECALL
    cost_ratio: float = DEFAULT_COST_RATIO


class GateConfig(BaseModel):
    """The quality gate between a trained model and its aliases."""

    on_fail: GateActionKind = "fail"
    min_balanced_accuracy_margin: float = DEFAULT_GATE_MARGIN
    disabled: bool = False


class JobConfig(BaseModel):
    """A validated job: what the worker trains and publishes."""

    model_name: str
    architecture: str
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    dataset_path: str  # resolved absolute path under a data root
    freeze: FreezeSpec = Field(default_factory=lambda: FreezeSpec(mode="unfrozen"))
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    operating_point: OperatingPointConfig = Field(default_factory=OperatingPointConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    publish_aliases: list[str] = Field(default_factory=list)
    defect_class: str = ""  # empty until the dataset's classes are known
    labels: dict[str, str] = Field(default_factory=dict)
    ok_classes: list[str] = Field(default_factory=list)  # resolved with the classes (services.trainer.class_roles)
    drop_test_duplicates: bool = False


# -- small readers -----------------------------------------------------------------------------

def _enum(enum: EnumTypeWrapper, prefix: str, value: Any, field: str, unspecified: str | None = None) -> str:
    """The word of an enum value given by name, number or word; an unset / *_UNSPECIFIED value gives
    ``unspecified`` (the value numbered 0 when that is None)."""
    words = enum_words(enum, prefix)
    descriptor = enum.DESCRIPTOR
    name: str | None = None
    if value is None:
        name = descriptor.values_by_number[0].name
    elif isinstance(value, int) and not isinstance(value, bool) and value in descriptor.values_by_number:
        name = descriptor.values_by_number[value].name
    elif isinstance(value, str) and value in words:
        name = value
    elif isinstance(value, str) and value.lower() in words.values() and not value.lower() == "unspecified":
        return value.lower()
    if name is None:
        raise InvalidArgument(f"{field}: unknown value {value!r} (valid: {', '.join(words)})")
    if name.endswith("_UNSPECIFIED") and unspecified is not None:
        return unspecified
    return words[name]


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


def _in_range(value: float, lo: float, hi: float, field: str) -> float:
    if not lo <= value <= hi:
        raise InvalidArgument(f"{field} must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


# -- parts -------------------------------------------------------------------------------------

def parse_freeze(data: Mapping[str, Any] | None) -> FreezeSpec:
    """The FreezePolicy oneof: mode, fraction or prefixes; nothing set means unfrozen."""
    data = data or {}
    if "mode" in data:
        return FreezeSpec(mode=_enum(common_pb2.FreezeMode, "FREEZE_MODE_", data["mode"], "freeze.mode", "unfrozen"))
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
    kind = _enum(trainer_pb2.WeightsKind, "WEIGHTS_KIND_", data.get("kind"), "weights.kind", "default")
    location = str(data.get("location", "")).strip()
    key_map = {str(k): str(v) for k, v in (data.get("key_map") or {}).items()}
    if kind == "file":
        if not location:
            raise InvalidArgument("weights.location must name a file for WEIGHTS_KIND_FILE")
        location = str(resolve_under_roots(location, data_roots))
    elif kind == "named" and location != LITE0_PYPI:
        raise InvalidArgument(f"weights.location {location!r} is not a known named source (valid: {LITE0_PYPI})")
    return WeightsConfig(kind=kind, location=location, key_map=key_map)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DatasetFacts:
    """What the preset's data-driven choices look at (known once the dataset is discovered)."""

    root: Path
    folder: ImageFolder
    defect_class: str


def parse_recipe(data: Mapping[str, Any] | None, arch: ArchSpec, dataset: DatasetFacts | None = None,
                 from_scratch: bool = False) -> RecipeConfig:
    """The named preset with the job's overrides; the preset's data-driven values decided from ``dataset``.

    Without ``dataset`` (not yet discovered) those values take their thesis fallbacks.
    ``from_scratch``: the network starts from random weights, so ``default`` trains the backbone
    at the head's rate (unless the job sets ``lr``).
    """
    data = data or {}
    preset = str(data.get("preset", "") or recipes.DEFAULT_PRESET).strip().lower()
    if preset not in recipes.PRESETS:
        raise InvalidArgument(f"recipe.preset: unknown preset {preset!r} (valid: {', '.join(recipes.preset_names())})")
    base = recipes.preset_values(preset)
    decided: dict[str, str] = {}
    val_fraction = _number(data, "val_fraction", "recipe.val_fraction", DEFAULT_VAL_FRACTION)
    assert val_fraction is not None
    if not 0.0 < val_fraction <= 0.5:
        raise InvalidArgument(f"recipe.val_fraction must be in (0, 0.5], got {val_fraction:g}")

    epochs = _int(data, "epochs", "recipe.epochs")
    if not epochs:
        if preset == "thesis":
            epochs = recipes.THESIS_EPOCHS_BY_ARCH.get(arch.key, base["epochs"])
        elif dataset is not None:
            train_images = round(len(dataset.folder.train) * (1 - val_fraction))
            epochs = recipes.auto_epochs(train_images)
            decided["epochs"] = f"{recipes.IMAGES_SEEN_BUDGET} images seen / {train_images} training images"
        else:
            epochs = _THESIS["epochs"]
    if not 1 <= epochs <= MAX_EPOCHS:
        raise InvalidArgument(f"recipe.epochs must be in [1, {MAX_EPOCHS}], got {epochs}")
    batch = _int(data, "batch_size", "recipe.batch_size") or base["batch_size"]
    if not 1 <= batch <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"recipe.batch_size must be in [1, {MAX_BATCH_SIZE}], got {batch}")
    head_lr = _check_lr(_number(data, "head_lr", "recipe.head_lr", base["head_lr"]) or 0.0, "recipe.head_lr")
    default_lr = head_lr if from_scratch and preset == "default" else base["lr"]
    lr = _check_lr(_number(data, "lr", "recipe.lr", default_lr) or 0.0, "recipe.lr")
    if preset == "thesis" and "head_lr" not in data:
        head_lr = lr  # the thesis has one lr for every group
    wd = _number(data, "weight_decay", "recipe.weight_decay", base["weight_decay"])
    assert wd is not None
    if not 0.0 <= wd < 1.0:
        raise InvalidArgument(f"recipe.weight_decay must be in [0, 1), got {wd:g}")
    group_lr: dict[str, float] = {}
    for name, value in (data.get("group_lr") or {}).items():
        field = f"recipe.group_lr[{name!r}]"
        group_lr[str(name)] = _check_lr(_number({"v": value}, "v", field) or 0.0, field)
    warmup = _number(data, "warmup_epochs", "recipe.warmup_epochs", base["warmup_epochs"])
    if warmup is None:
        warmup = recipes.auto_warmup(epochs)
    if not 0.0 <= warmup <= epochs:
        raise InvalidArgument(f"recipe.warmup_epochs must be in [0, epochs={epochs}], got {warmup:g}")
    image_size = _int(data, "image_size", "recipe.image_size")
    if not image_size:
        if preset == "default" and dataset is not None and arch.attention is None:
            choice = recipes.auto_image_size(dataset.folder.train, dataset.root, dataset.defect_class)
            image_size, decided["image_size"] = choice.image_size, choice.reason
        else:  # the thesis, attention networks (their position embeddings fix the size), no data yet
            image_size = arch.input_size
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise InvalidArgument(f"recipe.image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    if data.get("early_stopping_patience") is not None:
        patience = _int(data, "early_stopping_patience", "recipe.early_stopping_patience")
    elif base["early_stopping_patience"] is None:
        patience = recipes.auto_patience(epochs)
    else:
        patience = base["early_stopping_patience"]
    devices = _int(data, "devices", "recipe.devices") or 1
    check_devices(devices)  # on the validating host's default device: GPUs there, else CPU processes
    loader_workers = _int(data, "loader_workers", "recipe.loader_workers")
    if loader_workers > MAX_LOADER_WORKERS:
        raise InvalidArgument(f"recipe.loader_workers must be at most {MAX_LOADER_WORKERS}, got {loader_workers}")
    return RecipeConfig(
        preset=preset,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        head_lr=head_lr,
        weight_decay=wd,
        group_lr=group_lr,
        schedule=_enum(trainer_pb2.Schedule, "SCHEDULE_", data.get("schedule"), "recipe.schedule",
                       base["schedule"]),  # type: ignore[arg-type]
        warmup_epochs=warmup,
        early_stopping_patience=patience,
        image_size=image_size,
        augment=bool(data.get("augment", base["augment"])),
        class_balance=_enum(trainer_pb2.ClassBalance, "CLASS_BALANCE_", data.get("class_balance"),
                            "recipe.class_balance", base["class_balance"]),  # type: ignore[arg-type]
        seed=_int(data, "seed", "recipe.seed"),
        precision=_enum(trainer_pb2.Precision, "PRECISION_", data.get("precision"),
                        "recipe.precision"),  # type: ignore[arg-type]
        val_fraction=val_fraction,
        devices=devices,
        loader_workers=loader_workers,
        max_batches_per_epoch=_int(data, "max_batches_per_epoch", "recipe.max_batches_per_epoch"),
        decided_from_data=decided,
    )


def parse_operating_point(data: Mapping[str, Any] | None, preset: str) -> OperatingPointConfig:
    data = data or {}
    goal = _enum(trainer_pb2.ThresholdGoal, "THRESHOLD_GOAL_", data.get("goal"), "operating_point.goal",
                 recipes.PRESETS[preset]["threshold_goal"])
    target = _number(data, "target_recall", "operating_point.target_recall", DEFAULT_TARGET_RECALL)
    cost = _number(data, "cost_ratio", "operating_point.cost_ratio", DEFAULT_COST_RATIO)
    assert target is not None and cost is not None
    if not 0.0 < target <= 1.0:
        raise InvalidArgument(f"operating_point.target_recall must be in (0, 1], got {target:g}")
    return OperatingPointConfig(goal=goal, target_recall=target,  # type: ignore[arg-type]
                                cost_ratio=_in_range(cost, 1e-3, 1e6, "operating_point.cost_ratio"))


def parse_gate(data: Mapping[str, Any] | None) -> GateConfig:
    data = data or {}
    margin = _number(data, "min_balanced_accuracy_margin", "gate.min_balanced_accuracy_margin", DEFAULT_GATE_MARGIN)
    assert margin is not None
    return GateConfig(
        on_fail=_enum(trainer_pb2.GateAction, "GATE_ACTION_", data.get("on_fail"), "gate.on_fail",
                      "fail"),  # type: ignore[arg-type]
        min_balanced_accuracy_margin=_in_range(margin, 0.0, 0.5, "gate.min_balanced_accuracy_margin"),
        disabled=bool(data.get("disabled", False)),
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
    weights = parse_weights(data.get("weights"), data_roots)
    if weights.kind == "named" and arch.timm_name != LITE0_TIMM_NAME:
        raise InvalidArgument(f"weights {weights.location!r} fit the architecture 'efficientnet_lite0' "
                              f"({LITE0_TIMM_NAME}) only, not {architecture!r}")
    freeze = parse_freeze(data.get("freeze"))
    dataset_path = str(data.get("dataset_path", "")).strip()
    defect_class = str(data.get("defect_class", "")).strip()
    ok_classes = [str(c).strip() for c in data.get("ok_classes", [])]
    facts: DatasetFacts | None = None
    if check_dataset:
        root, folder = inspect_dataset(dataset_path, data_roots)
        dataset_path = str(root)
        defect_class, ok_classes = resolve_class_roles(folder.classes, defect_class, ok_classes)
        facts = DatasetFacts(root=root, folder=folder, defect_class=defect_class)
    elif not dataset_path:
        raise InvalidArgument("dataset_path is required")
    from_scratch = weights.kind == "random" or (weights.kind == "default" and arch.default_weights == "random")
    recipe = parse_recipe(data.get("recipe"), arch, facts, from_scratch=from_scratch)
    operating_point = parse_operating_point(data.get("operating_point"), recipe.preset)
    gate = parse_gate(data.get("gate"))
    return JobConfig(
        model_name=model_name,
        architecture=architecture,
        weights=weights,
        dataset_path=dataset_path,
        freeze=freeze,
        recipe=recipe,
        operating_point=operating_point,
        gate=gate,
        publish_aliases=aliases,
        defect_class=defect_class,
        labels=labels,
        ok_classes=ok_classes,
        drop_test_duplicates=bool(data.get("drop_test_duplicates", False)),
    )
