"""Dataset evaluation: explain every annotated image with one or several models and score the maps.

The images are read once per batch and explained by every model in turn (the same images, the same
masks), through the same pipeline as a single Explain call (:func:`engine.explain_images`). Per
model: mean and pooled IoU / IoP / IoGT and the pointing game, overall and split by mask size; beside
them the trivial baselines on the same masks (the whole image marked, a centred disc of the mean
mask area) and the pointing game's chance level, overall and per size bucket. Beside them the
threshold-free scores of the maps (energy, pixel AUC, best F1; :mod:`common.overlap`) with their
chance levels. A model
*beats the baselines* when its mean IoU is above both baselines' and its pointing game above chance.

Memory stays bounded by the batch: per image only the scores are kept (and, for the disc baseline,
the bit-packed mask); per-image rows go straight to the CSV.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import InvalidArgument
from common.overlap import OverlapAccumulator, OverlapScores, SetScores, aggregate
from services.explainer import report
from services.explainer.annotated import AnnotatedSet, sample_batches
from services.explainer.engine import ExplainOptions, Resolved, check_layer, explain_images, resolve_options
from services.explainer.gallery import Gallery
from services.explainer.model_store import LoadedModel


@dataclass(frozen=True)
class SizeBucket:
    label: str
    low: float  # inclusive, fraction of the image
    high: float  # exclusive


SIZE_BUCKETS: tuple[SizeBucket, ...] = (
    SizeBucket("small <10%", 0.0, 0.10),
    SizeBucket("medium 10-50%", 0.10, 0.50),
    SizeBucket("large >=50%", 0.50, math.inf),
)


def size_bucket(mask_area: float) -> str:
    """Label of the bucket holding a mask covering ``mask_area`` of its image."""
    return next(b.label for b in SIZE_BUCKETS if b.low <= mask_area < b.high)


@dataclass(frozen=True)
class Baselines:
    """Trivial maps scored on a set of masks."""

    images: int
    whole_image: SetScores
    centred_disc: SetScores
    pointing_chance: float  # mean mask area: a uniformly random point's hit rate
    pointing_centre: float  # how often the image centre lies in the defect
    energy_chance: float = 0.0  # mean mask area: the energy of an evenly spread map
    pixel_auc_chance: float = 0.5
    best_f1_chance: float = 0.0  # mean F1 of the whole image marked


@dataclass(frozen=True)
class ModelEvaluation:
    name: str
    version: int
    resolved: Resolved
    overall: SetScores
    by_size: dict[str, SetScores]  # bucket label -> scores, non-empty buckets only, in SIZE_BUCKETS order
    beats_baselines: bool
    beats_by_size: dict[str, bool]  # the same test against each bucket's own baselines

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class DatasetEvaluation:
    models: list[ModelEvaluation]
    baselines: Baselines
    baselines_by_size: dict[str, Baselines]
    images: int  # images scored
    without_mask: int  # images under the folder without a mask file
    empty_masks: int  # mask files marking no defect
    files: report.ReportFiles | None = None


@dataclass(frozen=True)
class Progress:
    name: str
    version: int
    done: int
    total: int


def beats(scores: SetScores, baselines: Baselines) -> bool:
    """Mean IoU above both trivial baselines' and the pointing game above chance."""
    pointing = scores.pointing_rate if scores.pointing_rate is not None else 0.0
    return (scores.mean_iou > baselines.whole_image.mean_iou and scores.mean_iou > baselines.centred_disc.mean_iou
            and pointing > baselines.pointing_chance)


@dataclass
class _BaselineTally:
    overall: OverlapAccumulator = field(default_factory=OverlapAccumulator)
    buckets: dict[str, OverlapAccumulator] = field(default_factory=dict)

    def add(self, mask: np.ndarray) -> None:
        whole = np.ones_like(mask, dtype=bool)
        scores = self.overall.add(whole, mask)
        self.buckets.setdefault(size_bucket(scores.mask_area), OverlapAccumulator()).add(whole, mask)

    @staticmethod
    def _baselines(acc: OverlapAccumulator) -> Baselines:
        summary = acc.summary()
        return Baselines(len(acc), summary.whole_image, summary.centred_disc, summary.pointing_chance,
                         summary.pointing_centre, summary.energy_chance, summary.pixel_auc_chance,
                         summary.best_f1_chance)

    def result(self) -> tuple[Baselines, dict[str, Baselines]]:
        by_size = {b.label: self._baselines(self.buckets[b.label]) for b in SIZE_BUCKETS if b.label in self.buckets}
        return self._baselines(self.overall), by_size


@dataclass
class _ModelTally:
    scores: list[OverlapScores] = field(default_factory=list)

    def result(self, model: LoadedModel, resolved: Resolved, baselines: Baselines,
               baselines_by_size: dict[str, Baselines]) -> ModelEvaluation:
        overall = aggregate(self.scores)
        by_size = {}
        for bucket in SIZE_BUCKETS:
            members = [s for s in self.scores if size_bucket(s.mask_area) == bucket.label]
            if members:
                by_size[bucket.label] = aggregate(members)
        manifest = model.manifest
        return ModelEvaluation(manifest.name, manifest.version, resolved, overall, by_size, beats(overall, baselines),
                               {k: beats(v, baselines_by_size[k]) for k, v in by_size.items()})


def per_model(models: Sequence[LoadedModel], opts: ExplainOptions | Sequence[ExplainOptions]) -> list[ExplainOptions]:
    """One options object per model: the same for all, or one each."""
    if isinstance(opts, ExplainOptions):
        return [opts] * len(models)
    if len(opts) != len(models):
        raise InvalidArgument(f"{len(opts)} option sets for {len(models)} models")
    return list(opts)


def resolve_all(models: Sequence[LoadedModel], opts: ExplainOptions | Sequence[ExplainOptions]) -> list[Resolved]:
    """Each model's method / layer / threshold, checked before any image is read (unknown layer → error)."""
    resolved = []
    for model, model_opts in zip(models, per_model(models, opts), strict=True):
        res = resolve_options(model, model_opts)
        check_layer(model, res.method, res.layer)
        resolved.append(res)
    return resolved


def evaluate_dataset(
    models: Sequence[LoadedModel],
    dataset: AnnotatedSet,
    opts: ExplainOptions | Sequence[ExplainOptions],
    *,
    batch_size: int,
    out_dir: Path | None,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    is_active: Callable[[], bool] = lambda: True,
) -> Iterator[Progress | DatasetEvaluation]:
    """Yield a :class:`Progress` per model and batch, then one :class:`DatasetEvaluation`.

    ``opts`` applies to every model, or gives one options object per model (e.g. one checkpoint under
    several explanation settings).

    With ``out_dir`` the per-image CSV, the charts, the markdown table and a JSON summary are written
    there (see :mod:`report`); ``None`` writes nothing. ``is_active`` is polled between batches; when
    it turns false the evaluation stops without a result.

    Raises:
        InvalidArgument: options the models cannot honour, an undecodable image or mask, or a set
            whose masks all mark nothing.
    """
    options = per_model(models, opts)
    resolved = resolve_all(models, options)
    models_tally = [_ModelTally() for _ in models]
    baseline_tally = _BaselineTally()
    total = len(dataset.items)
    empty = 0
    gallery = Gallery() if out_dir is not None else None
    with report.PerImageCsv(out_dir / report.CSV_NAME if out_dir is not None else None) as csv:
        for batch in sample_batches(dataset, batch_size, max_bytes=max_image_bytes, max_pixels=max_image_pixels):
            if not is_active():
                return
            samples, done, empty = batch.samples, batch.done, batch.empty
            for sample in samples:
                baseline_tally.add(sample.mask)
            for model, model_opts, res, tally in zip(models, options, resolved, models_tally, strict=True):
                if samples:
                    _, explanations = explain_images(model, [s.image for s in samples], model_opts,
                                                     [s.mask for s in samples])
                    for sample, explanation in zip(samples, explanations, strict=True):
                        assert explanation.scores is not None
                        tally.scores.append(explanation.scores)
                        bucket = size_bucket(explanation.scores.mask_area)
                        csv.write(report.ImageRow.of(sample.item.name, model.manifest, res, explanation, bucket))
                        if gallery is not None:
                            gallery.offer(f"{model.manifest.name} v{model.manifest.version}", sample.item.name, bucket,
                                          sample.image, sample.mask, explanation)
                yield Progress(model.manifest.name, model.manifest.version, done, total)
        if not len(baseline_tally.overall):
            raise InvalidArgument(f"all {total} masks mark no defect: nothing to evaluate")
        baselines, baselines_by_size = baseline_tally.result()
        evaluation = DatasetEvaluation(
            models=[t.result(m, r, baselines, baselines_by_size)
                    for m, r, t in zip(models, resolved, models_tally, strict=True)],
            baselines=baselines, baselines_by_size=baselines_by_size, images=len(baseline_tally.overall),
            without_mask=dataset.without_mask, empty_masks=empty,
        )
        csv.commit()
    if out_dir is not None:
        evaluation = report.write_report(evaluation, out_dir, csv_path=csv.path, gallery=gallery)
    yield evaluation
