from protos.zdm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "model", "line_id", "part_id", "request_id", "threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PART_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    model: _common_pb2.ModelRef
    line_id: str
    part_id: str
    request_id: str
    threshold: float
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., line_id: _Optional[str] = ..., part_id: _Optional[str] = ..., request_id: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("class_name", "probability")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    probability: float
    def __init__(self, class_name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("probabilities", "predicted_class", "defective", "defect_probability", "threshold", "model", "timing", "image_sha256", "request_id", "error", "backend", "defect_type")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEFECTIVE_FIELD_NUMBER: _ClassVar[int]
    DEFECT_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    predicted_class: str
    defective: bool
    defect_probability: float
    threshold: float
    model: _common_pb2.ModelRef
    timing: Timing
    image_sha256: str
    request_id: str
    error: ItemError
    backend: str
    defect_type: str
    def __init__(self, probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., predicted_class: _Optional[str] = ..., defective: _Optional[bool] = ..., defect_probability: _Optional[float] = ..., threshold: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., image_sha256: _Optional[str] = ..., request_id: _Optional[str] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., backend: _Optional[str] = ..., defect_type: _Optional[str] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("images", "model", "line_id", "part_ids", "threshold")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PART_IDS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    model: _common_pb2.ModelRef
    line_id: str
    part_ids: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., line_id: _Optional[str] = ..., part_ids: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("info", "threshold", "backend", "loaded_at", "verification")
    INFO_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ModelInfo
    threshold: float
    backend: str
    loaded_at: float
    verification: BackendVerification
    def __init__(self, info: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., threshold: _Optional[float] = ..., backend: _Optional[str] = ..., loaded_at: _Optional[float] = ..., verification: _Optional[_Union[BackendVerification, _Mapping]] = ...) -> None: ...

class BackendVerification(_message.Message):
    __slots__ = ("method", "images", "threshold", "tolerance", "max_delta", "detail", "rejected")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_DELTA_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    method: str
    images: int
    threshold: float
    tolerance: float
    max_delta: float
    detail: str
    rejected: _containers.RepeatedCompositeFieldContainer[BackendRejection]
    def __init__(self, method: _Optional[str] = ..., images: _Optional[int] = ..., threshold: _Optional[float] = ..., tolerance: _Optional[float] = ..., max_delta: _Optional[float] = ..., detail: _Optional[str] = ..., rejected: _Optional[_Iterable[_Union[BackendRejection, _Mapping]]] = ...) -> None: ...

class BackendRejection(_message.Message):
    __slots__ = ("backend", "reason", "detail", "flips", "max_delta")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FLIPS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELTA_FIELD_NUMBER: _ClassVar[int]
    backend: str
    reason: str
    detail: str
    flips: int
    max_delta: float
    def __init__(self, backend: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., flips: _Optional[int] = ..., max_delta: _Optional[float] = ...) -> None: ...

class SetThresholdRequest(_message.Message):
    __slots__ = ("name", "threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class AuditQuery(_message.Message):
    __slots__ = ("part_id", "limit")
    PART_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    part_id: str
    limit: int
    def __init__(self, part_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("image_sha256", "model", "threshold", "probabilities", "defective", "timestamp", "line_id", "part_id", "caller")
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    DEFECTIVE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PART_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    image_sha256: str
    model: _common_pb2.ModelRef
    threshold: float
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    defective: bool
    timestamp: float
    line_id: str
    part_id: str
    caller: str
    def __init__(self, image_sha256: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., threshold: _Optional[float] = ..., probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., defective: _Optional[bool] = ..., timestamp: _Optional[float] = ..., line_id: _Optional[str] = ..., part_id: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class AuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
