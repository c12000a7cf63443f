"""Evaluation charts (PNG) after the thesis's Figures 5.17–5.19.

Per model a bar for the mean and one for the pooled IoU / IoP / IoGT, the trivial baselines (whole
image, centred disc) as dashed lines; the pointing game against its chance level; mean IoU per
mask-size bucket beside each bucket's baselines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.charts import Reference, Series, bar_chart

if TYPE_CHECKING:
    from services.explainer.evaluate import DatasetEvaluation

METRICS = (("iou", "IoU"), ("iop", "IoP"), ("iogt", "IoGT"))


def charts(evaluation: DatasetEvaluation) -> dict[str, bytes]:
    """Chart file name -> PNG bytes."""
    labels = [m.label for m in evaluation.models]
    b = evaluation.baselines
    out: dict[str, bytes] = {}
    for key, name in METRICS:
        whole, disc = getattr(b.whole_image, f"mean_{key}"), getattr(b.centred_disc, f"mean_{key}")
        out[f"{key}.png"] = bar_chart(
            f"{name} per model ({evaluation.images} images)", labels,
            [Series(f"mean {name}", [getattr(m.overall, f"mean_{key}") for m in evaluation.models]),
             Series(f"pooled {name}", [getattr(m.overall, f"pooled_{key}") for m in evaluation.models])],
            [Reference(f"whole image (mean {whole:.2f})", [whole]), Reference(f"centred disc (mean {disc:.2f})", [disc])],
            y_label=name)
    out["pointing.png"] = bar_chart(
        "Pointing game per model", labels,
        [Series("hit rate", [m.overall.pointing_rate or 0.0 for m in evaluation.models])],
        [Reference(f"chance (mean mask area {b.pointing_chance:.2f})", [b.pointing_chance])], y_label="hit rate")
    buckets = list(evaluation.baselines_by_size)
    out["iou_by_size.png"] = bar_chart(
        "Mean IoU by mask size", [f"{k} ({evaluation.baselines_by_size[k].images})" for k in buckets],
        [Series(m.label, [m.by_size[k].mean_iou if k in m.by_size else 0.0 for k in buckets])
         for m in evaluation.models],
        [Reference("whole image", [evaluation.baselines_by_size[k].whole_image.mean_iou for k in buckets]),
         Reference("centred disc", [evaluation.baselines_by_size[k].centred_disc.mean_iou for k in buckets])],
        y_label="mean IoU")
    return out
