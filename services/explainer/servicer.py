"""Explainer gRPC servicer: proto <-> internal types only; the work happens in engine / evaluate."""

from __future__ import annotations

import time

import grpc

from common.errors import InvalidArgument
from common.images import decode_image
from common.masks import load_mask
from common.settings import ExplainerSettings
from protos.zdm.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc
from services.explainer import heatmap as hm
from services.explainer.engine import ExplainOptions, explain_images
from services.explainer.model_store import ExplainerModelStore

METHOD_NAMES = {
    explainer_pb2.METHOD_UNSPECIFIED: "",
    explainer_pb2.METHOD_GRADCAM: "gradcam",
    explainer_pb2.METHOD_GRADCAM_PLUS_PLUS: "gradcam++",
    explainer_pb2.METHOD_EIGENCAM: "eigencam",
    explainer_pb2.METHOD_ATTENTION: "attention",
}
METHOD_ENUMS = {v: k for k, v in METHOD_NAMES.items() if v}
NORMALIZATION_NAMES = {
    explainer_pb2.NORMALIZATION_UNSPECIFIED: "",
    explainer_pb2.NORMALIZATION_MAX: "max",
    explainer_pb2.NORMALIZATION_MINMAX: "minmax",
}
NORMALIZATION_ENUMS = {v: k for k, v in NORMALIZATION_NAMES.items() if v}
MASK_FORMATS = {
    common_pb2.MASK_FORMAT_UNSPECIFIED: "auto",
    common_pb2.MASK_FORMAT_BINARY_PNG: "binary",
    common_pb2.MASK_FORMAT_COLOR_PNG: "color",
    common_pb2.MASK_FORMAT_YOLO: "yolo",
    common_pb2.MASK_FORMAT_XYXY: "xyxy",
}


def mask_from_proto(mask: common_pb2.Mask, height: int, width: int):
    from common.masks import boxes_to_mask

    if mask.data:
        return load_mask(mask.data, MASK_FORMATS.get(mask.format, "auto"), height, width)
    if mask.boxes:
        gt = boxes_to_mask([(b.x0, b.y0, b.x1, b.y1) for b in mask.boxes], height, width)
        if not gt.any():
            raise InvalidArgument("mask boxes mark no pixel of the image")
        return gt
    raise InvalidArgument("mask has neither data nor boxes")


def options_from(request) -> ExplainOptions:
    return ExplainOptions(
        method=METHOD_NAMES.get(request.method, ""),
        layer=request.layer,
        threshold=request.threshold if request.HasField("threshold") else None,
        normalization=NORMALIZATION_NAMES.get(request.normalization, ""),
        target_class=getattr(request, "target_class", ""),
        heads=tuple(request.attention.heads) if hasattr(request, "attention") else (),
    )


def scores_to_proto(scores) -> explainer_pb2.OverlapScores:
    return explainer_pb2.OverlapScores(
        iou=scores.iou, iop=scores.iop, iogt=scores.iogt, pointing_hit=bool(scores.pointing),
        predicted_area=scores.pred_area, mask_area=scores.mask_area,
    )


class ExplainerServicer(explainer_pb2_grpc.ExplainerServicer):
    def __init__(self, settings: ExplainerSettings, store: ExplainerModelStore) -> None:
        self.settings = settings
        self.store = store

    def Explain(self, request: explainer_pb2.ExplainRequest, context: grpc.ServicerContext):
        started = time.perf_counter()
        if not request.image.data:
            raise InvalidArgument("image.data is required")
        image = decode_image(request.image.data, max_bytes=self.settings.max_image_bytes,
                             max_pixels=self.settings.max_image_pixels, name=request.image.name)
        h, w = image.shape[:2]
        gt = mask_from_proto(request.mask, h, w) if request.HasField("mask") else None
        ref = request.model
        loaded = self.store.get(ref.name, ref.version, ref.alias)
        resolved, (result,) = explain_images(loaded, [image], options_from(request), [gt] if gt is not None else None)
        response = explainer_pb2.ExplainResponse(
            heatmap=explainer_pb2.Heatmap(width=w, height=h, float16_data=hm.heatmap_bytes(result.heatmap)),
            mask=result.mask.astype("uint8").tobytes(),
            threshold=resolved.threshold,
            normalization=NORMALIZATION_ENUMS[resolved.normalization],
            method=METHOD_ENUMS[resolved.method],
            layer=resolved.layer,
            predicted_class=result.predicted_class,
            probability=result.probability,
            explained_class=result.explained_class,
            model=common_pb2.ModelRef(name=loaded.manifest.name, version=loaded.manifest.version),
        )
        if result.scores is not None:
            response.scores.CopyFrom(scores_to_proto(result.scores))
        if request.want_png:
            response.overlay_png = hm.overlay_png(image, result.heatmap)
            response.mask_png = hm.mask_png(result.mask)
        response.seconds = time.perf_counter() - started
        return response
