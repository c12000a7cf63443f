"""Explainer gRPC servicer: proto <-> internal types only; the work happens in engine / evaluate / search."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from common.auth import require
from common.errors import InvalidArgument, ResourceExhausted
from common.images import decode_image, read_header
from common.manifest import ExplanationDefaults
from common.masks import load_mask
from common.overlap import SetScores
from common.paths import resolve_under_roots
from common.settings import ExplainerSettings
from protos.zdm.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc
from services.explainer import heatmap as hm
from services.explainer import method_names, report
from services.explainer.annotated import AnnotatedSet, find_annotated
from services.explainer.cam import GradientOptions
from services.explainer.engine import ExplainOptions, Tiling, explain_images
from services.explainer.evaluate import DatasetEvaluation, Progress, evaluate_dataset, resolve_all
from services.explainer.metrics import ExplainerMetrics
from services.explainer.model_store import ExplainerModelStore, LoadedModel
from services.explainer.regions import REGIONS
from services.explainer.search import DEFAULT_HOLDOUT, Candidate, HeldOut, search_with_holdout

log = logging.getLogger(__name__)

#: Largest batch a dataset request may ask for (memory grows with it).
MAX_BATCH_SIZE = 128

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


#: Bytes an Explain answer carries besides its per-pixel fields (names, scores, PNG headers).
ANSWER_OVERHEAD_BYTES = 64 * 1024


def answer_bytes(width: int, height: int, want_png: bool) -> int:
    """Upper bound of an Explain answer's size: float16 heatmap + mask bytes (+ RGB overlay and mask PNGs,
    counted uncompressed)."""
    per_pixel = 2 + 1 + (3 + 1 if want_png else 0)
    return width * height * per_pixel + ANSWER_OVERHEAD_BYTES


def mask_from_proto(mask: common_pb2.Mask, height: int, width: int, settings: ExplainerSettings):
    from common.masks import boxes_to_mask

    if mask.data:
        return load_mask(mask.data, MASK_FORMATS.get(mask.format, "auto"), height, width,
                         max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                         max_boxes=settings.max_mask_boxes)
    if mask.boxes:
        gt = boxes_to_mask([(b.x0, b.y0, b.x1, b.y1) for b in mask.boxes], height, width,
                           max_boxes=settings.max_mask_boxes)
        if not gt.any():
            raise InvalidArgument("mask boxes mark no pixel of the image")
        return gt
    raise InvalidArgument("mask has neither data nor boxes")


def gradients_from(message: explainer_pb2.GradientOptions) -> GradientOptions:
    return GradientOptions(smooth_samples=message.smooth_samples,
                           smooth_noise=message.smooth_noise if message.HasField("smooth_noise") else 0.15,
                           steps=message.steps or 16)


def tiles_from(message: explainer_pb2.TileOptions) -> Tiling | None:
    if not message.enabled:
        return None
    return Tiling(tile_size=message.tile_size, overlap=message.overlap if message.HasField("overlap") else 0.25)


def options_from(request) -> ExplainOptions:
    return ExplainOptions(
        method=method_names.name_of(request.method),
        layer=request.layer,
        threshold=request.threshold if request.HasField("threshold") else None,
        normalization=NORMALIZATION_NAMES.get(request.normalization, ""),
        target_class=getattr(request, "target_class", ""),
        heads=tuple(request.attention.heads) if hasattr(request, "attention") else (),
        region=request.region,  # "" = the manifest default
        gradients=gradients_from(request.gradients),
        tiles=tiles_from(request.tiles),
    )


def scores_to_proto(scores) -> explainer_pb2.OverlapScores:
    return explainer_pb2.OverlapScores(
        iou=scores.iou, iop=scores.iop, iogt=scores.iogt, pointing_hit=bool(scores.pointing),
        predicted_area=scores.pred_area, mask_area=scores.mask_area, energy=scores.energy or 0.0,
        pixel_auc=scores.pixel_auc or 0.0, best_f1=scores.best_f1 or 0.0,
        best_f1_threshold=scores.best_f1_threshold or 0.0,
    )


def aggregate_to_proto(s: SetScores, pointing: float | None = None) -> explainer_pb2.AggregateScores:
    """Means and pooled ratios; both carry the mean predicted and mask areas."""
    rate = s.pointing_rate if pointing is None else pointing
    return explainer_pb2.AggregateScores(
        images=s.count,
        mean=explainer_pb2.OverlapScores(iou=s.mean_iou, iop=s.mean_iop, iogt=s.mean_iogt,
                                         predicted_area=s.mean_pred_area, mask_area=s.mean_mask_area),
        pooled=explainer_pb2.OverlapScores(iou=s.pooled_iou, iop=s.pooled_iop, iogt=s.pooled_iogt,
                                           predicted_area=s.mean_pred_area, mask_area=s.mean_mask_area),
        pointing_game=rate or 0.0, mean_energy=s.mean_energy or 0.0, mean_pixel_auc=s.mean_pixel_auc or 0.0,
        mean_best_f1=s.mean_best_f1 or 0.0,
    )


def summary_to_proto(evaluation: DatasetEvaluation) -> explainer_pb2.DatasetSummary:
    """The whole-image baseline's pointing game is the chance level (a flat map's maximum is anywhere);
    the centred disc's is the rate at which the image centre lies in the defect."""
    b = evaluation.baselines
    summary = explainer_pb2.DatasetSummary(
        whole_image_baseline=aggregate_to_proto(b.whole_image, b.pointing_chance),
        centred_disc_baseline=aggregate_to_proto(b.centred_disc, b.pointing_centre),
        pointing_chance=b.pointing_chance, energy_chance=b.energy_chance, pixel_auc_chance=b.pixel_auc_chance,
        best_f1_chance=b.best_f1_chance,
    )
    for m in evaluation.models:
        entry = summary.models.add(
            model=common_pb2.ModelRef(name=m.name, version=m.version), method=m.resolved.method,
            layer=m.resolved.layer, threshold=m.resolved.threshold, overall=aggregate_to_proto(m.overall),
            beats_baselines=m.beats_baselines, region=m.resolved.region)
        for label, scores in m.by_size.items():
            entry.by_mask_size[label].CopyFrom(aggregate_to_proto(scores))
    if evaluation.files is not None:
        summary.csv_path = str(evaluation.files.csv_path)
        summary.chart_paths.extend(str(p) for p in evaluation.files.chart_paths)
        summary.table_markdown = evaluation.files.table_markdown
        if evaluation.files.html_path is not None:
            summary.report_html_path = str(evaluation.files.html_path)
    else:
        summary.table_markdown = report.markdown_table(evaluation)
    return summary


def candidate_to_proto(c: Candidate, region: str) -> explainer_pb2.SearchCandidate:
    return explainer_pb2.SearchCandidate(layer=c.layer, threshold=c.threshold, score=c.score, mean_iou=c.mean_iou,
                                         predicted_area=c.predicted_area, region=region,
                                         method=method_names.ENUMS.get(c.method, 0), pointing=c.pointing)


def search_regions(requested) -> list[str]:
    """The candidate regions in the given order, without repeats; empty = ["all"]. Checked up front."""
    regions = list(dict.fromkeys(requested)) or ["all"]
    bad = [r for r in regions if r not in REGIONS]
    if bad:
        raise InvalidArgument(f"unknown region(s) {bad}; choose from {', '.join(REGIONS)}")
    return regions


def progress_to_proto(p: Progress) -> explainer_pb2.EvaluateProgress:
    return explainer_pb2.EvaluateProgress(model=common_pb2.ModelRef(name=p.name, version=p.version),
                                          done=p.done, total=p.total)


class ExplainerServicer(explainer_pb2_grpc.ExplainerServicer):
    def __init__(self, settings: ExplainerSettings, store: ExplainerModelStore, *,
                 metrics: ExplainerMetrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics if metrics is not None else ExplainerMetrics()

    def Explain(self, request: explainer_pb2.ExplainRequest, context: grpc.ServicerContext):
        started = time.perf_counter()
        if not request.image.data:
            raise InvalidArgument("image.data is required")
        self._check_answer_fits(request)
        image = decode_image(request.image.data, max_bytes=self.settings.max_image_bytes,
                             max_pixels=self.settings.max_image_pixels, name=request.image.name)
        h, w = image.shape[:2]
        gt = mask_from_proto(request.mask, h, w, self.settings) if request.HasField("mask") else None
        ref = request.model
        loaded = self.store.get(ref.name, ref.version, ref.alias)
        resolved, (result,) = explain_images(loaded, [image], options_from(request), [gt] if gt is not None else None)
        response = explainer_pb2.ExplainResponse(
            heatmap=explainer_pb2.Heatmap(width=w, height=h, float16_data=hm.heatmap_bytes(result.heatmap)),
            mask=result.mask.astype("uint8").tobytes(),
            threshold=resolved.threshold,
            normalization=NORMALIZATION_ENUMS[resolved.normalization],
            method=method_names.ENUMS[resolved.method],
            layer=resolved.layer,
            region=resolved.region,
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
        self.metrics.explain_seconds.labels(resolved.method).observe(response.seconds)
        return response

    def _check_answer_fits(self, request: explainer_pb2.ExplainRequest) -> None:
        """Refuse, from the image header and before any work, an answer that would break the message limit."""
        header = read_header(request.image.data, name=request.image.name)
        size = answer_bytes(header.width, header.height, request.want_png)
        limit = self.settings.max_message_bytes
        if size > limit:
            raise ResourceExhausted(
                f"the answer for a {header.width}x{header.height} image (heatmap and mask at full resolution"
                f"{', PNGs' if request.want_png else ''}) could reach {size} bytes > the message limit {limit}; "
                f"send a smaller image{' or set want_png false' if request.want_png else ''}")

    # -- datasets --------------------------------------------------------------------------------
    def _dataset(self, images_path: str, masks_path: str, mask_format: int, limit: int) -> AnnotatedSet:
        roots = self.settings.common.data_roots
        for what, path in (("images_path", images_path), ("masks_path", masks_path)):
            if not path:
                raise InvalidArgument(f"{what} is required")
        images = resolve_under_roots(images_path, roots)
        masks = resolve_under_roots(masks_path, roots)
        return find_annotated(images, masks, MASK_FORMATS.get(mask_format, "auto"), limit)

    def _batch_size(self, requested: int) -> int:
        return max(1, min(requested or self.settings.batch_size, MAX_BATCH_SIZE))

    def EvaluateDataset(self, request: explainer_pb2.EvaluateDatasetRequest,
                        context: grpc.ServicerContext) -> Iterator[explainer_pb2.EvaluateDatasetEvent]:
        dataset = self._dataset(request.images_path, request.masks_path, request.mask_format, request.limit)
        refs = list(request.models) or [common_pb2.ModelRef()]
        models: list[LoadedModel] = [self.store.get(r.name, r.version, r.alias) for r in refs]
        opts = options_from(request)
        resolve_all(models, opts)  # bad options fail before a report folder is made
        out_dir = report.resolve_output_dir(request.output_dir, self.settings.output_root,
                                            self.settings.common.data_roots)
        log.info("evaluating %d images (%d without a mask) with %s into %s", len(dataset.items),
                 dataset.without_mask, ", ".join(f"{m.manifest.name} v{m.manifest.version}" for m in models), out_dir)
        started, outcome = time.monotonic(), "cancelled"
        try:
            for event in evaluate_dataset(models, dataset, opts, batch_size=self._batch_size(request.batch_size),
                                          out_dir=out_dir, max_image_bytes=self.settings.max_image_bytes,
                                          max_image_pixels=self.settings.max_image_pixels,
                                          is_active=context.is_active):
                if isinstance(event, Progress):
                    yield explainer_pb2.EvaluateDatasetEvent(progress=progress_to_proto(event))
                else:
                    outcome = "ok"
                    self.metrics.evaluated_images.inc(event.images * len(event.models))
                    self.metrics.evaluation_seconds.observe(time.monotonic() - started)
                    yield explainer_pb2.EvaluateDatasetEvent(summary=summary_to_proto(event))
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.evaluations.labels(outcome).inc()

    def SearchDefaults(self, request: explainer_pb2.SearchDefaultsRequest,
                       context: grpc.ServicerContext) -> Iterator[explainer_pb2.SearchDefaultsEvent]:
        if request.store:  # writes the model's manifest: checked before any work
            require("admin", "SearchDefaults with store=true")
        dataset = self._dataset(request.images_path, request.masks_path, request.mask_format, request.limit)
        ref = request.model
        loaded = self.store.get(ref.name, ref.version, ref.alias)
        regions = search_regions(request.regions)
        holdout = request.holdout_fraction if request.HasField("holdout_fraction") else DEFAULT_HOLDOUT
        # One pass over the images per method: each layer's heatmaps are scored for every region.
        events = search_with_holdout(
            loaded, dataset, holdout_fraction=holdout, seed=request.seed, regions=regions,
            method=method_names.name_of(request.method), methods=[method_names.name_of(m) for m in request.methods],
            layers=list(request.layers), fusions=list(request.fusions), thresholds=list(request.thresholds),
            batch_size=self.settings.batch_size, max_image_bytes=self.settings.max_image_bytes,
            max_image_pixels=self.settings.max_image_pixels, is_active=context.is_active)
        for event in events:
            if isinstance(event, Progress):
                yield explainer_pb2.SearchDefaultsEvent(progress=progress_to_proto(event))
            else:
                self.metrics.searches.labels("ok").inc()
                yield explainer_pb2.SearchDefaultsEvent(result=self._search_result(loaded, event, request.store))

    def _search_result(self, loaded: LoadedModel, result: HeldOut, store: bool) -> explainer_pb2.SearchResult:
        """The best candidate over all regions (search.best_outcome); stored only when asked and when it
        beats the whole-image baseline (score > 0) — on the held-out images when there are some."""
        outcome = result.best
        best = outcome.best
        judged = result.held_out or best
        stored = False
        name, version = loaded.manifest.name, loaded.manifest.version
        if store and judged.score > 0:
            self.store.registry.update_explanation(name, version, ExplanationDefaults(
                method=best.method, layer=best.layer, threshold=best.threshold,
                normalization=outcome.normalization, region=outcome.region))
            stored = True
            log.info("stored explanation defaults of %s v%d: %s at %s, threshold %g, region %s (score %.3f)",
                     name, version, best.method, best.layer, best.threshold, outcome.region, judged.score)
        elif store:
            log.warning("not storing defaults of %s v%d: the best candidate (%s, %s, %g, %s) does not beat the whole "
                        "image (score %.3f)", name, version, best.method, best.layer, best.threshold, outcome.region,
                        judged.score)
        message = explainer_pb2.SearchResult(
            best=candidate_to_proto(best, outcome.region),
            candidates=[candidate_to_proto(c, o.region) for o in result.outcomes for c in o.candidates], stored=stored,
            search_images=result.search_images, held_out_images=result.held_out_images)
        if result.held_out is not None:
            message.held_out.CopyFrom(candidate_to_proto(result.held_out, outcome.region))
        if result.defaults_held_out is not None:
            message.defaults_held_out.CopyFrom(candidate_to_proto(result.defaults_held_out,
                                                                  loaded.manifest.explanation.region or "all"))
        return message
