from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_UNSPECIFIED: _ClassVar[MaskFormat]
    MASK_FORMAT_BINARY_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_COLOR_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_YOLO: _ClassVar[MaskFormat]
    MASK_FORMAT_XYXY: _ClassVar[MaskFormat]

class FreezeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FREEZE_MODE_UNSPECIFIED: _ClassVar[FreezeMode]
    FREEZE_MODE_FROZEN: _ClassVar[FreezeMode]
    FREEZE_MODE_PARTIAL: _ClassVar[FreezeMode]
    FREEZE_MODE_UNFROZEN: _ClassVar[FreezeMode]
MASK_FORMAT_UNSPECIFIED: MaskFormat
MASK_FORMAT_BINARY_PNG: MaskFormat
MASK_FORMAT_COLOR_PNG: MaskFormat
MASK_FORMAT_YOLO: MaskFormat
MASK_FORMAT_XYXY: MaskFormat
FREEZE_MODE_UNSPECIFIED: FreezeMode
FREEZE_MODE_FROZEN: FreezeMode
FREEZE_MODE_PARTIAL: FreezeMode
FREEZE_MODE_UNFROZEN: FreezeMode

class Image(_message.Message):
    __slots__ = ("data", "name")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    name: str
    def __init__(self, data: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("data", "format", "boxes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: MaskFormat
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[MaskFormat, str]] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ...) -> None: ...

class ModulePrefixes(_message.Message):
    __slots__ = ("prefixes",)
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class FreezePolicy(_message.Message):
    __slots__ = ("mode", "fraction", "prefixes")
    MODE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    mode: FreezeMode
    fraction: float
    prefixes: ModulePrefixes
    def __init__(self, mode: _Optional[_Union[FreezeMode, str]] = ..., fraction: _Optional[float] = ..., prefixes: _Optional[_Union[ModulePrefixes, _Mapping]] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("class_name", "precision", "recall", "f1", "support")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, class_name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class SplitMetrics(_message.Message):
    __slots__ = ("split", "loss", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion", "class_names", "samples", "balanced_accuracy", "threshold")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PRECISION_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    RECALL_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    F1_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_MACRO_FIELD_NUMBER: _ClassVar[int]
    RECALL_MACRO_FIELD_NUMBER: _ClassVar[int]
    F1_MACRO_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    split: str
    loss: float
    accuracy: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    confusion: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    samples: int
    balanced_accuracy: float
    threshold: float
    def __init__(self, split: _Optional[str] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., precision_weighted: _Optional[float] = ..., recall_weighted: _Optional[float] = ..., f1_weighted: _Optional[float] = ..., precision_macro: _Optional[float] = ..., recall_macro: _Optional[float] = ..., f1_macro: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., confusion: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., samples: _Optional[int] = ..., balanced_accuracy: _Optional[float] = ..., threshold: _Optional[float] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("image_size", "mean", "std", "channels")
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    image_size: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    channels: int
    def __init__(self, image_size: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., channels: _Optional[int] = ...) -> None: ...

class ExplanationDefaults(_message.Message):
    __slots__ = ("method", "layer", "threshold", "normalization", "region")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    method: str
    layer: str
    threshold: float
    normalization: str
    region: str
    def __init__(self, method: _Optional[str] = ..., layer: _Optional[str] = ..., threshold: _Optional[float] = ..., normalization: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "aliases", "architecture", "classes", "defect_class", "preprocessing", "freeze", "metrics", "explanation", "dataset_fingerprint", "weights_source", "trainable_params", "total_params", "job_id", "created_at", "manifest_json", "ok_classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    DEFECT_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    OK_CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    architecture: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    defect_class: str
    preprocessing: Preprocessing
    freeze: FreezePolicy
    metrics: _containers.RepeatedCompositeFieldContainer[SplitMetrics]
    explanation: ExplanationDefaults
    dataset_fingerprint: str
    weights_source: str
    trainable_params: int
    total_params: int
    job_id: str
    created_at: float
    manifest_json: str
    ok_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., architecture: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., defect_class: _Optional[str] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., freeze: _Optional[_Union[FreezePolicy, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[SplitMetrics, _Mapping]]] = ..., explanation: _Optional[_Union[ExplanationDefaults, _Mapping]] = ..., dataset_fingerprint: _Optional[str] = ..., weights_source: _Optional[str] = ..., trainable_params: _Optional[int] = ..., total_params: _Optional[int] = ..., job_id: _Optional[str] = ..., created_at: _Optional[float] = ..., manifest_json: _Optional[str] = ..., ok_classes: _Optional[_Iterable[str]] = ...) -> None: ...
