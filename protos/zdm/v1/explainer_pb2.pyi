from protos.zdm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_GRADCAM: _ClassVar[Method]
    METHOD_GRADCAM_PLUS_PLUS: _ClassVar[Method]
    METHOD_EIGENCAM: _ClassVar[Method]
    METHOD_ATTENTION: _ClassVar[Method]
    METHOD_LAYERCAM: _ClassVar[Method]
    METHOD_HIRESCAM: _ClassVar[Method]
    METHOD_GRAD_X_INPUT: _ClassVar[Method]
    METHOD_INTEGRATED_GRADIENTS: _ClassVar[Method]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_MAX: _ClassVar[Normalization]
    NORMALIZATION_MINMAX: _ClassVar[Normalization]
METHOD_UNSPECIFIED: Method
METHOD_GRADCAM: Method
METHOD_GRADCAM_PLUS_PLUS: Method
METHOD_EIGENCAM: Method
METHOD_ATTENTION: Method
METHOD_LAYERCAM: Method
METHOD_HIRESCAM: Method
METHOD_GRAD_X_INPUT: Method
METHOD_INTEGRATED_GRADIENTS: Method
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_MAX: Normalization
NORMALIZATION_MINMAX: Normalization

class AttentionOptions(_message.Message):
    __slots__ = ("heads",)
    HEADS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, heads: _Optional[_Iterable[int]] = ...) -> None: ...

class GradientOptions(_message.Message):
    __slots__ = ("smooth_samples", "smooth_noise", "steps")
    SMOOTH_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_NOISE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    smooth_samples: int
    smooth_noise: float
    steps: int
    def __init__(self, smooth_samples: _Optional[int] = ..., smooth_noise: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class TileOptions(_message.Message):
    __slots__ = ("enabled", "tile_size", "overlap")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    tile_size: int
    overlap: float
    def __init__(self, enabled: _Optional[bool] = ..., tile_size: _Optional[int] = ..., overlap: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("image", "model", "method", "layer", "threshold", "normalization", "target_class", "mask", "want_png", "attention", "region", "gradients", "tiles")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    WANT_PNG_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    model: _common_pb2.ModelRef
    method: Method
    layer: str
    threshold: float
    normalization: Normalization
    target_class: str
    mask: _common_pb2.Mask
    want_png: bool
    attention: AttentionOptions
    region: str
    gradients: GradientOptions
    tiles: TileOptions
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., layer: _Optional[str] = ..., threshold: _Optional[float] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., target_class: _Optional[str] = ..., mask: _Optional[_Union[_common_pb2.Mask, _Mapping]] = ..., want_png: _Optional[bool] = ..., attention: _Optional[_Union[AttentionOptions, _Mapping]] = ..., region: _Optional[str] = ..., gradients: _Optional[_Union[GradientOptions, _Mapping]] = ..., tiles: _Optional[_Union[TileOptions, _Mapping]] = ...) -> None: ...

class OverlapScores(_message.Message):
    __slots__ = ("iou", "iop", "iogt", "pointing_hit", "predicted_area", "mask_area", "energy", "pixel_auc", "best_f1", "best_f1_threshold")
    IOU_FIELD_NUMBER: _ClassVar[int]
    IOP_FIELD_NUMBER: _ClassVar[int]
    IOGT_FIELD_NUMBER: _ClassVar[int]
    POINTING_HIT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AREA_FIELD_NUMBER: _ClassVar[int]
    MASK_AREA_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    PIXEL_AUC_FIELD_NUMBER: _ClassVar[int]
    BEST_F1_FIELD_NUMBER: _ClassVar[int]
    BEST_F1_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    iou: float
    iop: float
    iogt: float
    pointing_hit: bool
    predicted_area: float
    mask_area: float
    energy: float
    pixel_auc: float
    best_f1: float
    best_f1_threshold: float
    def __init__(self, iou: _Optional[float] = ..., iop: _Optional[float] = ..., iogt: _Optional[float] = ..., pointing_hit: _Optional[bool] = ..., predicted_area: _Optional[float] = ..., mask_area: _Optional[float] = ..., energy: _Optional[float] = ..., pixel_auc: _Optional[float] = ..., best_f1: _Optional[float] = ..., best_f1_threshold: _Optional[float] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("width", "height", "float16_data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FLOAT16_DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    float16_data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., float16_data: _Optional[bytes] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("heatmap", "mask", "threshold", "normalization", "method", "layer", "predicted_class", "probability", "explained_class", "scores", "overlay_png", "mask_png", "model", "seconds", "region")
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_CLASS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    heatmap: Heatmap
    mask: bytes
    threshold: float
    normalization: Normalization
    method: Method
    layer: str
    predicted_class: str
    probability: float
    explained_class: str
    scores: OverlapScores
    overlay_png: bytes
    mask_png: bytes
    model: _common_pb2.ModelRef
    seconds: float
    region: str
    def __init__(self, heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., mask: _Optional[bytes] = ..., threshold: _Optional[float] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., method: _Optional[_Union[Method, str]] = ..., layer: _Optional[str] = ..., predicted_class: _Optional[str] = ..., probability: _Optional[float] = ..., explained_class: _Optional[str] = ..., scores: _Optional[_Union[OverlapScores, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., mask_png: _Optional[bytes] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., seconds: _Optional[float] = ..., region: _Optional[str] = ...) -> None: ...

class EvaluateDatasetRequest(_message.Message):
    __slots__ = ("images_path", "masks_path", "mask_format", "models", "method", "layer", "threshold", "normalization", "limit", "output_dir", "batch_size", "region", "gradients", "tiles")
    IMAGES_PATH_FIELD_NUMBER: _ClassVar[int]
    MASKS_PATH_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    images_path: str
    masks_path: str
    mask_format: _common_pb2.MaskFormat
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    method: Method
    layer: str
    threshold: float
    normalization: Normalization
    limit: int
    output_dir: str
    batch_size: int
    region: str
    gradients: GradientOptions
    tiles: TileOptions
    def __init__(self, images_path: _Optional[str] = ..., masks_path: _Optional[str] = ..., mask_format: _Optional[_Union[_common_pb2.MaskFormat, str]] = ..., models: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ..., method: _Optional[_Union[Method, str]] = ..., layer: _Optional[str] = ..., threshold: _Optional[float] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., limit: _Optional[int] = ..., output_dir: _Optional[str] = ..., batch_size: _Optional[int] = ..., region: _Optional[str] = ..., gradients: _Optional[_Union[GradientOptions, _Mapping]] = ..., tiles: _Optional[_Union[TileOptions, _Mapping]] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("model", "done", "total")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    done: int
    total: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class AggregateScores(_message.Message):
    __slots__ = ("images", "mean", "pooled", "pointing_game", "mean_energy", "mean_pixel_auc", "mean_best_f1")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    POINTING_GAME_FIELD_NUMBER: _ClassVar[int]
    MEAN_ENERGY_FIELD_NUMBER: _ClassVar[int]
    MEAN_PIXEL_AUC_FIELD_NUMBER: _ClassVar[int]
    MEAN_BEST_F1_FIELD_NUMBER: _ClassVar[int]
    images: int
    mean: OverlapScores
    pooled: OverlapScores
    pointing_game: float
    mean_energy: float
    mean_pixel_auc: float
    mean_best_f1: float
    def __init__(self, images: _Optional[int] = ..., mean: _Optional[_Union[OverlapScores, _Mapping]] = ..., pooled: _Optional[_Union[OverlapScores, _Mapping]] = ..., pointing_game: _Optional[float] = ..., mean_energy: _Optional[float] = ..., mean_pixel_auc: _Optional[float] = ..., mean_best_f1: _Optional[float] = ...) -> None: ...

class ModelEvaluation(_message.Message):
    __slots__ = ("model", "method", "layer", "threshold", "overall", "by_mask_size", "beats_baselines", "region")
    class ByMaskSizeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AggregateScores
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AggregateScores, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    BY_MASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEATS_BASELINES_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    method: str
    layer: str
    threshold: float
    overall: AggregateScores
    by_mask_size: _containers.MessageMap[str, AggregateScores]
    beats_baselines: bool
    region: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., method: _Optional[str] = ..., layer: _Optional[str] = ..., threshold: _Optional[float] = ..., overall: _Optional[_Union[AggregateScores, _Mapping]] = ..., by_mask_size: _Optional[_Mapping[str, AggregateScores]] = ..., beats_baselines: _Optional[bool] = ..., region: _Optional[str] = ...) -> None: ...

class DatasetSummary(_message.Message):
    __slots__ = ("models", "whole_image_baseline", "centred_disc_baseline", "pointing_chance", "csv_path", "chart_paths", "table_markdown", "energy_chance", "pixel_auc_chance", "best_f1_chance", "report_html_path")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_IMAGE_BASELINE_FIELD_NUMBER: _ClassVar[int]
    CENTRED_DISC_BASELINE_FIELD_NUMBER: _ClassVar[int]
    POINTING_CHANCE_FIELD_NUMBER: _ClassVar[int]
    CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    CHART_PATHS_FIELD_NUMBER: _ClassVar[int]
    TABLE_MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    ENERGY_CHANCE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_AUC_CHANCE_FIELD_NUMBER: _ClassVar[int]
    BEST_F1_CHANCE_FIELD_NUMBER: _ClassVar[int]
    REPORT_HTML_PATH_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelEvaluation]
    whole_image_baseline: AggregateScores
    centred_disc_baseline: AggregateScores
    pointing_chance: float
    csv_path: str
    chart_paths: _containers.RepeatedScalarFieldContainer[str]
    table_markdown: str
    energy_chance: float
    pixel_auc_chance: float
    best_f1_chance: float
    report_html_path: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelEvaluation, _Mapping]]] = ..., whole_image_baseline: _Optional[_Union[AggregateScores, _Mapping]] = ..., centred_disc_baseline: _Optional[_Union[AggregateScores, _Mapping]] = ..., pointing_chance: _Optional[float] = ..., csv_path: _Optional[str] = ..., chart_paths: _Optional[_Iterable[str]] = ..., table_markdown: _Optional[str] = ..., energy_chance: _Optional[float] = ..., pixel_auc_chance: _Optional[float] = ..., best_f1_chance: _Optional[float] = ..., report_html_path: _Optional[str] = ...) -> None: ...

class EvaluateDatasetEvent(_message.Message):
    __slots__ = ("progress", "summary")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    summary: DatasetSummary
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., summary: _Optional[_Union[DatasetSummary, _Mapping]] = ...) -> None: ...

class SearchDefaultsRequest(_message.Message):
    __slots__ = ("model", "images_path", "masks_path", "mask_format", "method", "layers", "thresholds", "limit", "store", "regions", "methods", "fusions", "holdout_fraction", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PATH_FIELD_NUMBER: _ClassVar[int]
    MASKS_PATH_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    FUSIONS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images_path: str
    masks_path: str
    mask_format: _common_pb2.MaskFormat
    method: Method
    layers: _containers.RepeatedScalarFieldContainer[str]
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    limit: int
    store: bool
    regions: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    fusions: _containers.RepeatedScalarFieldContainer[str]
    holdout_fraction: float
    seed: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images_path: _Optional[str] = ..., masks_path: _Optional[str] = ..., mask_format: _Optional[_Union[_common_pb2.MaskFormat, str]] = ..., method: _Optional[_Union[Method, str]] = ..., layers: _Optional[_Iterable[str]] = ..., thresholds: _Optional[_Iterable[float]] = ..., limit: _Optional[int] = ..., store: _Optional[bool] = ..., regions: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., fusions: _Optional[_Iterable[str]] = ..., holdout_fraction: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class SearchCandidate(_message.Message):
    __slots__ = ("layer", "threshold", "score", "mean_iou", "predicted_area", "region", "method", "pointing")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_IOU_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AREA_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    POINTING_FIELD_NUMBER: _ClassVar[int]
    layer: str
    threshold: float
    score: float
    mean_iou: float
    predicted_area: float
    region: str
    method: Method
    pointing: float
    def __init__(self, layer: _Optional[str] = ..., threshold: _Optional[float] = ..., score: _Optional[float] = ..., mean_iou: _Optional[float] = ..., predicted_area: _Optional[float] = ..., region: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., pointing: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("best", "candidates", "stored", "held_out", "defaults_held_out", "search_images", "held_out_images")
    BEST_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    best: SearchCandidate
    candidates: _containers.RepeatedCompositeFieldContainer[SearchCandidate]
    stored: bool
    held_out: SearchCandidate
    defaults_held_out: SearchCandidate
    search_images: int
    held_out_images: int
    def __init__(self, best: _Optional[_Union[SearchCandidate, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[SearchCandidate, _Mapping]]] = ..., stored: _Optional[bool] = ..., held_out: _Optional[_Union[SearchCandidate, _Mapping]] = ..., defaults_held_out: _Optional[_Union[SearchCandidate, _Mapping]] = ..., search_images: _Optional[int] = ..., held_out_images: _Optional[int] = ...) -> None: ...

class SearchDefaultsEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    result: SearchResult
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., result: _Optional[_Union[SearchResult, _Mapping]] = ...) -> None: ...
