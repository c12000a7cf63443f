from protos.zdm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightsKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_KIND_UNSPECIFIED: _ClassVar[WeightsKind]
    WEIGHTS_KIND_HUB: _ClassVar[WeightsKind]
    WEIGHTS_KIND_FILE: _ClassVar[WeightsKind]
    WEIGHTS_KIND_RANDOM: _ClassVar[WeightsKind]
    WEIGHTS_KIND_NAMED: _ClassVar[WeightsKind]

class Schedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_UNSPECIFIED: _ClassVar[Schedule]
    SCHEDULE_CONSTANT: _ClassVar[Schedule]
    SCHEDULE_COSINE: _ClassVar[Schedule]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_AUTO: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]

class ClassBalance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASS_BALANCE_UNSPECIFIED: _ClassVar[ClassBalance]
    CLASS_BALANCE_NONE: _ClassVar[ClassBalance]
    CLASS_BALANCE_AUTO: _ClassVar[ClassBalance]
    CLASS_BALANCE_WEIGHTED: _ClassVar[ClassBalance]

class ThresholdGoal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THRESHOLD_GOAL_UNSPECIFIED: _ClassVar[ThresholdGoal]
    THRESHOLD_GOAL_RECALL: _ClassVar[ThresholdGoal]
    THRESHOLD_GOAL_BALANCED_ACCURACY: _ClassVar[ThresholdGoal]
    THRESHOLD_GOAL_COST: _ClassVar[ThresholdGoal]
    THRESHOLD_GOAL_FIXED: _ClassVar[ThresholdGoal]

class GateAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_ACTION_UNSPECIFIED: _ClassVar[GateAction]
    GATE_ACTION_FAIL: _ClassVar[GateAction]
    GATE_ACTION_PUBLISH_WITHOUT_ALIASES: _ClassVar[GateAction]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_RETRYING: _ClassVar[JobState]
WEIGHTS_KIND_UNSPECIFIED: WeightsKind
WEIGHTS_KIND_HUB: WeightsKind
WEIGHTS_KIND_FILE: WeightsKind
WEIGHTS_KIND_RANDOM: WeightsKind
WEIGHTS_KIND_NAMED: WeightsKind
SCHEDULE_UNSPECIFIED: Schedule
SCHEDULE_CONSTANT: Schedule
SCHEDULE_COSINE: Schedule
PRECISION_AUTO: Precision
PRECISION_FP32: Precision
PRECISION_BF16: Precision
PRECISION_FP16: Precision
CLASS_BALANCE_UNSPECIFIED: ClassBalance
CLASS_BALANCE_NONE: ClassBalance
CLASS_BALANCE_AUTO: ClassBalance
CLASS_BALANCE_WEIGHTED: ClassBalance
THRESHOLD_GOAL_UNSPECIFIED: ThresholdGoal
THRESHOLD_GOAL_RECALL: ThresholdGoal
THRESHOLD_GOAL_BALANCED_ACCURACY: ThresholdGoal
THRESHOLD_GOAL_COST: ThresholdGoal
THRESHOLD_GOAL_FIXED: ThresholdGoal
GATE_ACTION_UNSPECIFIED: GateAction
GATE_ACTION_FAIL: GateAction
GATE_ACTION_PUBLISH_WITHOUT_ALIASES: GateAction
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_RETRYING: JobState

class WeightsSource(_message.Message):
    __slots__ = ("kind", "location", "key_map")
    class KeyMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    KEY_MAP_FIELD_NUMBER: _ClassVar[int]
    kind: WeightsKind
    location: str
    key_map: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[_Union[WeightsKind, str]] = ..., location: _Optional[str] = ..., key_map: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "head_lr", "weight_decay", "group_lr", "schedule", "warmup_epochs", "early_stopping_patience", "image_size", "augment", "seed", "precision", "val_fraction", "devices", "loader_workers", "max_batches_per_epoch", "preset", "class_balance")
    class GroupLrEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    HEAD_LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    GROUP_LR_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LOADER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    CLASS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    group_lr: _containers.ScalarMap[str, float]
    schedule: Schedule
    warmup_epochs: float
    early_stopping_patience: int
    image_size: int
    augment: bool
    seed: int
    precision: Precision
    val_fraction: float
    devices: int
    loader_workers: int
    max_batches_per_epoch: int
    preset: str
    class_balance: ClassBalance
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., head_lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., group_lr: _Optional[_Mapping[str, float]] = ..., schedule: _Optional[_Union[Schedule, str]] = ..., warmup_epochs: _Optional[float] = ..., early_stopping_patience: _Optional[int] = ..., image_size: _Optional[int] = ..., augment: _Optional[bool] = ..., seed: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., val_fraction: _Optional[float] = ..., devices: _Optional[int] = ..., loader_workers: _Optional[int] = ..., max_batches_per_epoch: _Optional[int] = ..., preset: _Optional[str] = ..., class_balance: _Optional[_Union[ClassBalance, str]] = ...) -> None: ...

class OperatingPointSpec(_message.Message):
    __slots__ = ("goal", "target_recall", "cost_ratio")
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    COST_RATIO_FIELD_NUMBER: _ClassVar[int]
    goal: ThresholdGoal
    target_recall: float
    cost_ratio: float
    def __init__(self, goal: _Optional[_Union[ThresholdGoal, str]] = ..., target_recall: _Optional[float] = ..., cost_ratio: _Optional[float] = ...) -> None: ...

class QualityGateSpec(_message.Message):
    __slots__ = ("on_fail", "min_balanced_accuracy_margin", "disabled")
    ON_FAIL_FIELD_NUMBER: _ClassVar[int]
    MIN_BALANCED_ACCURACY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    on_fail: GateAction
    min_balanced_accuracy_margin: float
    disabled: bool
    def __init__(self, on_fail: _Optional[_Union[GateAction, str]] = ..., min_balanced_accuracy_margin: _Optional[float] = ..., disabled: _Optional[bool] = ...) -> None: ...

class OperatingPoint(_message.Message):
    __slots__ = ("threshold", "goal", "target_recall", "cost_ratio", "recall", "specificity", "precision", "balanced_accuracy", "goal_met", "roc_auc")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    COST_RATIO_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SPECIFICITY_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    GOAL_MET_FIELD_NUMBER: _ClassVar[int]
    ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    goal: ThresholdGoal
    target_recall: float
    cost_ratio: float
    recall: float
    specificity: float
    precision: float
    balanced_accuracy: float
    goal_met: bool
    roc_auc: float
    def __init__(self, threshold: _Optional[float] = ..., goal: _Optional[_Union[ThresholdGoal, str]] = ..., target_recall: _Optional[float] = ..., cost_ratio: _Optional[float] = ..., recall: _Optional[float] = ..., specificity: _Optional[float] = ..., precision: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., goal_met: _Optional[bool] = ..., roc_auc: _Optional[float] = ...) -> None: ...

class GateReport(_message.Message):
    __slots__ = ("passed", "reason", "balanced_accuracy", "required_balanced_accuracy", "majority_accuracy", "accuracy", "recall_goal_met", "on_fail", "aliases_set")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAJORITY_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RECALL_GOAL_MET_FIELD_NUMBER: _ClassVar[int]
    ON_FAIL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_SET_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    reason: str
    balanced_accuracy: float
    required_balanced_accuracy: float
    majority_accuracy: float
    accuracy: float
    recall_goal_met: bool
    on_fail: GateAction
    aliases_set: bool
    def __init__(self, passed: _Optional[bool] = ..., reason: _Optional[str] = ..., balanced_accuracy: _Optional[float] = ..., required_balanced_accuracy: _Optional[float] = ..., majority_accuracy: _Optional[float] = ..., accuracy: _Optional[float] = ..., recall_goal_met: _Optional[bool] = ..., on_fail: _Optional[_Union[GateAction, str]] = ..., aliases_set: _Optional[bool] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model_name", "architecture", "weights", "dataset_path", "freeze", "recipe", "publish_aliases", "defect_class", "labels", "operating_point", "gate", "drop_test_duplicates", "ok_classes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ALIASES_FIELD_NUMBER: _ClassVar[int]
    DEFECT_CLASS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    DROP_TEST_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    OK_CLASSES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    architecture: str
    weights: WeightsSource
    dataset_path: str
    freeze: _common_pb2.FreezePolicy
    recipe: Recipe
    publish_aliases: _containers.RepeatedScalarFieldContainer[str]
    defect_class: str
    labels: _containers.ScalarMap[str, str]
    operating_point: OperatingPointSpec
    gate: QualityGateSpec
    drop_test_duplicates: bool
    ok_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., architecture: _Optional[str] = ..., weights: _Optional[_Union[WeightsSource, _Mapping]] = ..., dataset_path: _Optional[str] = ..., freeze: _Optional[_Union[_common_pb2.FreezePolicy, _Mapping]] = ..., recipe: _Optional[_Union[Recipe, _Mapping]] = ..., publish_aliases: _Optional[_Iterable[str]] = ..., defect_class: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., operating_point: _Optional[_Union[OperatingPointSpec, _Mapping]] = ..., gate: _Optional[_Union[QualityGateSpec, _Mapping]] = ..., drop_test_duplicates: _Optional[bool] = ..., ok_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class SweepArm(_message.Message):
    __slots__ = ("freeze", "lr", "head_lr", "label")
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    HEAD_LR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    freeze: _common_pb2.FreezePolicy
    lr: float
    head_lr: float
    label: str
    def __init__(self, freeze: _Optional[_Union[_common_pb2.FreezePolicy, _Mapping]] = ..., lr: _Optional[float] = ..., head_lr: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class SweepSpec(_message.Message):
    __slots__ = ("base", "architectures", "arms")
    BASE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURES_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    base: JobSpec
    architectures: _containers.RepeatedScalarFieldContainer[str]
    arms: _containers.RepeatedCompositeFieldContainer[SweepArm]
    def __init__(self, base: _Optional[_Union[JobSpec, _Mapping]] = ..., architectures: _Optional[_Iterable[str]] = ..., arms: _Optional[_Iterable[_Union[SweepArm, _Mapping]]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("job", "sweep", "idempotency_key", "max_attempts")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    job: JobSpec
    sweep: SweepSpec
    idempotency_key: str
    max_attempts: int
    def __init__(self, job: _Optional[_Union[JobSpec, _Mapping]] = ..., sweep: _Optional[_Union[SweepSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job_id", "deduplicated", "child_job_ids", "dataset_report")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    CHILD_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_REPORT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    deduplicated: bool
    child_job_ids: _containers.RepeatedScalarFieldContainer[str]
    dataset_report: DatasetReport
    def __init__(self, job_id: _Optional[str] = ..., deduplicated: _Optional[bool] = ..., child_job_ids: _Optional[_Iterable[str]] = ..., dataset_report: _Optional[_Union[DatasetReport, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("epoch", "epochs", "batch", "batches", "loss", "images_per_second", "eta_seconds")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    images_per_second: float
    eta_seconds: float
    def __init__(self, epoch: _Optional[int] = ..., epochs: _Optional[int] = ..., batch: _Optional[int] = ..., batches: _Optional[int] = ..., loss: _Optional[float] = ..., images_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class EpochSummary(_message.Message):
    __slots__ = ("epoch", "train", "val", "learning_rate", "seconds")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train: _common_pb2.SplitMetrics
    val: _common_pb2.SplitMetrics
    learning_rate: float
    seconds: float
    def __init__(self, epoch: _Optional[int] = ..., train: _Optional[_Union[_common_pb2.SplitMetrics, _Mapping]] = ..., val: _Optional[_Union[_common_pb2.SplitMetrics, _Mapping]] = ..., learning_rate: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class SweepRow(_message.Message):
    __slots__ = ("job_id", "architecture", "arm", "state", "metrics", "trainable_params", "model", "cosine_to_initial")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COSINE_TO_INITIAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    architecture: str
    arm: str
    state: JobState
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.SplitMetrics]
    trainable_params: int
    model: _common_pb2.ModelRef
    cosine_to_initial: float
    def __init__(self, job_id: _Optional[str] = ..., architecture: _Optional[str] = ..., arm: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.SplitMetrics, _Mapping]]] = ..., trainable_params: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., cosine_to_initial: _Optional[float] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("model", "metrics", "epochs_run", "seconds", "cosine_to_initial", "sweep", "operating_point", "gate", "preset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    COSINE_TO_INITIAL_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.SplitMetrics]
    epochs_run: int
    seconds: float
    cosine_to_initial: float
    sweep: _containers.RepeatedCompositeFieldContainer[SweepRow]
    operating_point: OperatingPoint
    gate: GateReport
    preset: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.SplitMetrics, _Mapping]]] = ..., epochs_run: _Optional[int] = ..., seconds: _Optional[float] = ..., cosine_to_initial: _Optional[float] = ..., sweep: _Optional[_Iterable[_Union[SweepRow, _Mapping]]] = ..., operating_point: _Optional[_Union[OperatingPoint, _Mapping]] = ..., gate: _Optional[_Union[GateReport, _Mapping]] = ..., preset: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "spec", "sweep", "attempt", "max_attempts", "worker", "created_at", "started_at", "finished_at", "error", "progress", "result", "trainable_params", "total_params", "unreadable_images", "parent_job_id", "child_job_ids", "checkpoint_epoch", "dataset_report")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DATASET_REPORT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    spec: JobSpec
    sweep: SweepSpec
    attempt: int
    max_attempts: int
    worker: str
    created_at: float
    started_at: float
    finished_at: float
    error: str
    progress: Progress
    result: JobResult
    trainable_params: int
    total_params: int
    unreadable_images: int
    parent_job_id: str
    child_job_ids: _containers.RepeatedScalarFieldContainer[str]
    checkpoint_epoch: int
    dataset_report: DatasetReport
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., sweep: _Optional[_Union[SweepSpec, _Mapping]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., worker: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., trainable_params: _Optional[int] = ..., total_params: _Optional[int] = ..., unreadable_images: _Optional[int] = ..., parent_job_id: _Optional[str] = ..., child_job_ids: _Optional[_Iterable[str]] = ..., checkpoint_epoch: _Optional[int] = ..., dataset_report: _Optional[_Union[DatasetReport, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "timestamp", "state", "progress", "epoch", "message", "finished")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    timestamp: float
    state: JobState
    progress: Progress
    epoch: EpochSummary
    message: str
    finished: Job
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp: _Optional[float] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., epoch: _Optional[_Union[EpochSummary, _Mapping]] = ..., message: _Optional[str] = ..., finished: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "parent_job_id")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    limit: int
    parent_job_id: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., limit: _Optional[int] = ..., parent_job_id: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CompareModelsRequest(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: _common_pb2.ModelRef
    b: _common_pb2.ModelRef
    def __init__(self, a: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., b: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class CompareModelsResponse(_message.Message):
    __slots__ = ("cosine_similarity", "compared_tensors", "skipped_tensors")
    COSINE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    COMPARED_TENSORS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_TENSORS_FIELD_NUMBER: _ClassVar[int]
    cosine_similarity: float
    compared_tensors: int
    skipped_tensors: int
    def __init__(self, cosine_similarity: _Optional[float] = ..., compared_tensors: _Optional[int] = ..., skipped_tensors: _Optional[int] = ...) -> None: ...

class ClassCount(_message.Message):
    __slots__ = ("class_name", "count")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    count: int
    def __init__(self, class_name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class SplitCounts(_message.Message):
    __slots__ = ("split", "images", "classes")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    split: str
    images: int
    classes: _containers.RepeatedCompositeFieldContainer[ClassCount]
    def __init__(self, split: _Optional[str] = ..., images: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[ClassCount, _Mapping]]] = ...) -> None: ...

class ValueCount(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Spread(_message.Message):
    __slots__ = ("min", "max", "median")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    median: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ..., median: _Optional[float] = ...) -> None: ...

class DatasetFile(_message.Message):
    __slots__ = ("path", "split", "class_name", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    split: str
    class_name: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., split: _Optional[str] = ..., class_name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DuplicateSummary(_message.Message):
    __slots__ = ("groups", "redundant_files", "cross_split_groups", "conflicting_groups", "val_files_in_train", "test_files_in_train")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    REDUNDANT_FILES_FIELD_NUMBER: _ClassVar[int]
    CROSS_SPLIT_GROUPS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_GROUPS_FIELD_NUMBER: _ClassVar[int]
    VAL_FILES_IN_TRAIN_FIELD_NUMBER: _ClassVar[int]
    TEST_FILES_IN_TRAIN_FIELD_NUMBER: _ClassVar[int]
    groups: int
    redundant_files: int
    cross_split_groups: int
    conflicting_groups: int
    val_files_in_train: int
    test_files_in_train: int
    def __init__(self, groups: _Optional[int] = ..., redundant_files: _Optional[int] = ..., cross_split_groups: _Optional[int] = ..., conflicting_groups: _Optional[int] = ..., val_files_in_train: _Optional[int] = ..., test_files_in_train: _Optional[int] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("exact", "max_distance", "files", "cross_split", "conflicting_labels")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CROSS_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_LABELS_FIELD_NUMBER: _ClassVar[int]
    exact: bool
    max_distance: int
    files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    cross_split: bool
    conflicting_labels: bool
    def __init__(self, exact: _Optional[bool] = ..., max_distance: _Optional[int] = ..., files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., cross_split: _Optional[bool] = ..., conflicting_labels: _Optional[bool] = ...) -> None: ...

class DatasetReport(_message.Message):
    __slots__ = ("dataset_path", "classes", "splits", "imbalance_ratio", "sizes", "width", "height", "aspect_ratio", "channels", "bit_depths", "formats", "grey_colour_images", "unreadable_count", "unreadable", "exact_duplicates", "near_duplicates", "duplicate_groups", "near_duplicate_bits", "test_after_dedup", "warnings", "errors", "seconds", "cached", "images", "seed", "val_fraction", "decoded")
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_RATIO_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTHS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    GREY_COLOUR_IMAGES_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_BITS_FIELD_NUMBER: _ClassVar[int]
    TEST_AFTER_DEDUP_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    dataset_path: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    splits: _containers.RepeatedCompositeFieldContainer[SplitCounts]
    imbalance_ratio: float
    sizes: _containers.RepeatedCompositeFieldContainer[ValueCount]
    width: Spread
    height: Spread
    aspect_ratio: Spread
    channels: _containers.RepeatedCompositeFieldContainer[ValueCount]
    bit_depths: _containers.RepeatedCompositeFieldContainer[ValueCount]
    formats: _containers.RepeatedCompositeFieldContainer[ValueCount]
    grey_colour_images: int
    unreadable_count: int
    unreadable: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    exact_duplicates: DuplicateSummary
    near_duplicates: DuplicateSummary
    duplicate_groups: _containers.RepeatedCompositeFieldContainer[DuplicateGroup]
    near_duplicate_bits: int
    test_after_dedup: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    cached: bool
    images: int
    seed: int
    val_fraction: float
    decoded: bool
    def __init__(self, dataset_path: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., splits: _Optional[_Iterable[_Union[SplitCounts, _Mapping]]] = ..., imbalance_ratio: _Optional[float] = ..., sizes: _Optional[_Iterable[_Union[ValueCount, _Mapping]]] = ..., width: _Optional[_Union[Spread, _Mapping]] = ..., height: _Optional[_Union[Spread, _Mapping]] = ..., aspect_ratio: _Optional[_Union[Spread, _Mapping]] = ..., channels: _Optional[_Iterable[_Union[ValueCount, _Mapping]]] = ..., bit_depths: _Optional[_Iterable[_Union[ValueCount, _Mapping]]] = ..., formats: _Optional[_Iterable[_Union[ValueCount, _Mapping]]] = ..., grey_colour_images: _Optional[int] = ..., unreadable_count: _Optional[int] = ..., unreadable: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., exact_duplicates: _Optional[_Union[DuplicateSummary, _Mapping]] = ..., near_duplicates: _Optional[_Union[DuplicateSummary, _Mapping]] = ..., duplicate_groups: _Optional[_Iterable[_Union[DuplicateGroup, _Mapping]]] = ..., near_duplicate_bits: _Optional[int] = ..., test_after_dedup: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ..., cached: _Optional[bool] = ..., images: _Optional[int] = ..., seed: _Optional[int] = ..., val_fraction: _Optional[float] = ..., decoded: _Optional[bool] = ...) -> None: ...

class CheckDatasetRequest(_message.Message):
    __slots__ = ("dataset_path", "seed", "val_fraction")
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    dataset_path: str
    seed: int
    val_fraction: float
    def __init__(self, dataset_path: _Optional[str] = ..., seed: _Optional[int] = ..., val_fraction: _Optional[float] = ...) -> None: ...
