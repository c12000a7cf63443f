"""Files of a dataset evaluation: per-image CSV, charts (PNG, :mod:`charts`), a markdown table, a JSON
summary and ``report.html``: one self-contained page with the settings, the summary beside the trivial
baselines, the charts, and a gallery of the worst explanations (:mod:`gallery`) filterable by mask size
and model. The page's summary columns are the fields of :class:`SetScores` and a gallery card shows
every score field of the image's result, so new scores appear without touching the page.

Reports are written only under the service's output root or a configured data root, and only into a
folder that is new or that the explainer made (it holds ``.zdm-report``): never over a foreign file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from common.html_page import esc, fmt, page, png_uri, table
from common.manifest import Manifest
from common.overlap import SetScores
from services.explainer.charts import charts
from services.explainer.gallery import TILES, Gallery, GalleryEntry

if TYPE_CHECKING:
    from services.explainer.engine import Explanation, Resolved
    from services.explainer.evaluate import Baselines, DatasetEvaluation

CSV_NAME = "per_image.csv"
TABLE_NAME = "summary.md"
JSON_NAME = "summary.json"
OWNER_MARKER = ".zdm-report"  # in every folder the explainer made for reports
METRICS = (("iou", "IoU"), ("iop", "IoP"), ("iogt", "IoGT"))
HTML_NAME = "report.html"


# --------------------------------------------------------------------------- where reports go


def resolve_output_dir(requested: str, output_root: Path, data_roots: Sequence[Path]) -> Path:
    """The folder a report is written to, created if needed.

    Empty: a new ``eval-<time>-<id>`` folder under ``output_root``. Relative: under ``output_root``.
    Absolute: must lie (after resolving symlinks and ``..``) under ``output_root`` or a data root.
    An existing folder is used only when the explainer made it (``OWNER_MARKER``) or it is empty.

    Raises:
        InvalidArgument: a NUL byte in the path.
        PermissionDenied: the folder would be outside those roots.
        FailedPrecondition: the folder exists with files the explainer did not write, or is a file.
    """
    if "\x00" in requested:
        raise InvalidArgument("output_dir contains a NUL byte")
    root = Path(output_root).resolve()
    if not requested.strip():
        target = root / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    else:
        raw = Path(requested)
        target = (raw if raw.is_absolute() else root / raw).resolve()
    allowed = [root, *(Path(r).resolve() for r in data_roots)]
    if not any(target.is_relative_to(r) for r in allowed):
        raise PermissionDenied(f"output_dir {requested!r} is outside the output root and the data roots")
    _claim(target, requested)
    return target


def _claim(folder: Path, requested: str) -> None:
    """Make ``folder`` ours: create it, or accept it when it is already ours or empty; then mark it."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise FailedPrecondition(f"output_dir {requested!r} exists and is not a folder") from None
        if not (folder / OWNER_MARKER).is_file() and any(folder.iterdir()):
            raise FailedPrecondition(
                f"output_dir {requested!r} already holds files the explainer did not write; name a new folder") from None
    marker = folder / OWNER_MARKER
    if not marker.is_file():
        with open(marker, "x", encoding="utf-8") as fh:  # O_EXCL: never through a planted symlink
            fh.write("made by the zdm explainer; reports here may be replaced\n")


# --------------------------------------------------------------------------- per-image CSV


@dataclass(frozen=True)
class ImageRow:
    image: str
    model: str
    version: int
    method: str
    layer: str
    threshold: float
    region: str
    mask_size: str
    iou: float
    iop: float
    iogt: float
    pointing: bool
    pred_area: float
    mask_area: float
    predicted_class: str
    probability: float
    explained_class: str
    energy: float | None = None  # threshold-free scores of the heatmap (common.overlap)
    pixel_auc: float | None = None
    best_f1: float | None = None

    @classmethod
    def of(cls, image: str, manifest: Manifest, resolved: Resolved, explanation: Explanation, bucket: str) -> ImageRow:
        s = explanation.scores
        assert s is not None
        return cls(image, manifest.name, manifest.version, resolved.method, resolved.layer, resolved.threshold,
                   resolved.region, bucket, s.iou, s.iop, s.iogt, bool(s.pointing), s.pred_area, s.mask_area,
                   explanation.predicted_class, explanation.probability, explanation.explained_class,
                   s.energy, s.pixel_auc, s.best_f1)


CSV_FIELDS = tuple(f.name for f in dataclasses.fields(ImageRow))


class PerImageCsv:
    """Streams rows to ``<path>.partial`` and renames it to ``path`` on :meth:`commit`; an evaluation
    that fails or is cancelled leaves no CSV behind. ``path=None`` discards the rows."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".partial") if path is not None else None
        self._file: Any = None
        self._writer: Any = None
        self.rows = 0

    def __enter__(self) -> PerImageCsv:
        if self._tmp is not None:
            self._file = open(self._tmp, "w", newline="", encoding="utf-8")  # closed in commit / __exit__
            self._writer = csv.writer(self._file)
            self._writer.writerow(CSV_FIELDS)
        return self

    def write(self, row: ImageRow) -> None:
        self.rows += 1
        if self._writer is not None:
            self._writer.writerow([_cell(v) for v in dataclasses.astuple(row)])

    def commit(self) -> None:
        if self._file is not None and self.path is not None and self._tmp is not None:
            self._file.close()
            os.replace(self._tmp, self.path)
            self._file = None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._file is not None:  # not committed
            self._file.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


# --------------------------------------------------------------------------- markdown table


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _row(set_label: str, label: str, s: SetScores, verdict: str = "") -> str:
    return (f"| {set_label} | {label} | {s.count} | {_f(s.mean_iou)} | {_f(s.mean_iop)} | {_f(s.mean_iogt)} | "
            f"{_f(s.pooled_iou)} | {_f(s.pooled_iop)} | {_f(s.pooled_iogt)} | {_f(s.pointing_rate)} | "
            f"{_f(s.mean_pred_area)} | {_f(s.mean_mask_area)} | {verdict} |")


def _baseline_rows(set_label: str, b: Baselines) -> list[str]:
    return [
        _row(set_label, "*whole image*", dataclasses.replace(b.whole_image, pointing_rate=None)),
        _row(set_label, "*centred disc*", dataclasses.replace(b.centred_disc, pointing_rate=None)),
        f"| {set_label} | *pointing chance* | {b.images} | | | | | | | {_f(b.pointing_chance)} | | | |",
    ]


def markdown_table(evaluation: DatasetEvaluation) -> str:
    """The summary as markdown: models, then per set (all, each mask-size bucket) scores and baselines."""
    lines = [
        f"Images scored: {evaluation.images} (skipped: {evaluation.without_mask} without a mask file, "
        f"{evaluation.empty_masks} whose mask marks no defect).",
        "",
    ]
    for m in evaluation.models:
        r = m.resolved
        region = "" if r.region == "all" else f", region {r.region}"
        lines.append(f"- **{m.label}**: {r.method} at `{r.layer}`, threshold {r.threshold:g}, "
                     f"normalisation {r.normalization}{region}")
    lines += [
        "",
        "| set | model | images | mean IoU | mean IoP | mean IoGT | pooled IoU | pooled IoP | pooled IoGT | "
        "pointing | pred. area | mask area | beats baselines |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in evaluation.models:
        lines.append(_row("all", m.label, m.overall, "yes" if m.beats_baselines else "no"))
    lines += _baseline_rows("all", evaluation.baselines)
    for label, baselines in evaluation.baselines_by_size.items():
        for m in evaluation.models:
            scores = m.by_size.get(label)
            if scores is not None:
                lines.append(_row(label, m.label, scores, "yes" if m.beats_by_size[label] else "no"))
        lines += _baseline_rows(label, baselines)
    return "\n".join(lines + _threshold_free_rows(evaluation)) + "\n"


def _threshold_free_rows(evaluation: DatasetEvaluation) -> list[str]:
    """Energy, pixel AUC and best F1 of the maps (no threshold, no region), each beside its chance level."""
    lines = ["", "Threshold-free scores of the heatmaps (chance: a map that knows nothing of the defect):", "",
             "| set | model | energy | pixel AUC | best F1 |", "|---|---|---:|---:|---:|"]
    sets = [("all", evaluation.baselines, {m.label: m.overall for m in evaluation.models})]
    sets += [(label, b, {m.label: m.by_size[label] for m in evaluation.models if label in m.by_size})
             for label, b in evaluation.baselines_by_size.items()]
    for set_label, b, scores in sets:
        for label, s in scores.items():
            lines.append(f"| {set_label} | {label} | {_f(s.mean_energy)} | {_f(s.mean_pixel_auc)} | {_f(s.mean_best_f1)} |")
        lines.append(f"| {set_label} | *chance* | {_f(b.energy_chance)} | {_f(b.pixel_auc_chance)} | "
                     f"{_f(b.best_f1_chance)} |")
    return lines


# --------------------------------------------------------------------------- HTML page

_FILTER_JS = """
(function(){
  var sel={bucket:document.getElementById('bucket'),model:document.getElementById('model')};
  function apply(){
    var shown=0, cards=document.querySelectorAll('.card');
    cards.forEach(function(c){
      var ok=(sel.bucket.value==='*'||c.dataset.bucket===sel.bucket.value)&&
             (sel.model.value==='*'||c.dataset.model===sel.model.value);
      c.classList.toggle('hidden',!ok); if(ok){shown++;}
    });
    document.getElementById('shown').textContent=shown+' of '+cards.length+' shown';
  }
  sel.bucket.addEventListener('change',apply); sel.model.addEventListener('change',apply); apply();
})();
"""


def _set_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(SetScores)]


def _summary_rows(evaluation: DatasetEvaluation) -> tuple[list[str], list[list[object]], list[str]]:
    """Headers, rows and row classes of the summary: per set, the models then the baselines."""
    fields = _set_fields()
    headers = ["set", "model", *(f.replace("_", " ") for f in fields), "beats baselines"]
    rows: list[list[object]] = []
    classes: list[str] = []

    def add(set_label: str, label: str, scores: SetScores, verdict: object, cls: str) -> None:
        rows.append([set_label, label, *(getattr(scores, f) for f in fields), verdict])
        classes.append(cls)

    def baselines(set_label: str, b: Baselines) -> None:
        add(set_label, "whole image (baseline)", dataclasses.replace(b.whole_image, pointing_rate=b.pointing_chance),
            "", "baseline")
        add(set_label, "centred disc (baseline)", dataclasses.replace(b.centred_disc, pointing_rate=b.pointing_centre),
            "", "baseline")

    for m in evaluation.models:
        add("all", m.label, m.overall, m.beats_baselines, "good" if m.beats_baselines else "bad")
    baselines("all", evaluation.baselines)
    for label, b in evaluation.baselines_by_size.items():
        for m in evaluation.models:
            if label in m.by_size:
                add(label, m.label, m.by_size[label], m.beats_by_size[label], "good" if m.beats_by_size[label] else "bad")
        baselines(label, b)
    return headers, rows, classes


def _card(entry: GalleryEntry) -> str:
    figures = "".join(f'<figure><img src="{uri}" alt="{esc(name)} of {esc(entry.image)}"><figcaption>{esc(name)}'
                      f"</figcaption></figure>" for name, uri in zip(TILES, entry.tiles, strict=True))
    scores = " · ".join(f"{esc(k)} {esc(fmt(v))}" for k, v in entry.scores.items())
    return (f'<div class="card" data-bucket="{esc(entry.bucket)}" data-model="{esc(entry.model)}">'
            f'<div class="name" title="{esc(entry.image)}">{esc(entry.image)}</div><div class="tiles">{figures}</div>'
            f'<div class="scores">{scores}</div><div class="scores">{esc(entry.model)} · {esc(entry.bucket)} · '
            f"predicted {esc(entry.predicted_class)} ({entry.probability:.2f})</div></div>")


def _select(name: str, label: str, values: Sequence[str]) -> str:
    options = '<option value="*">all</option>' + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return f'<label for="{name}">{esc(label)}</label> <select id="{name}">{options}</select>'


def html_report(evaluation: DatasetEvaluation, chart_pngs: dict[str, bytes], gallery: Gallery | None) -> str:
    """The evaluation as one self-contained page: settings, summary with baselines, charts, worst-first gallery."""
    settings = "".join(
        f"<li><b>{esc(m.label)}</b>: {esc(m.resolved.method)} at <code>{esc(m.resolved.layer)}</code>, threshold "
        f"{m.resolved.threshold:g}, normalisation {esc(m.resolved.normalization)}, region {esc(m.resolved.region)}</li>"
        for m in evaluation.models)
    headers, rows, classes = _summary_rows(evaluation)
    body = [
        f'<p class="meta">Images scored: {evaluation.images} (skipped: {evaluation.without_mask} without a mask file, '
        f"{evaluation.empty_masks} whose mask marks no defect). A model beats the baselines when its mean IoU is above "
        f"both trivial maps' and its pointing game above chance (the baselines' pointing column: chance level for the "
        f"whole image, the image centre for the disc).</p><ul>{settings}</ul>",
        "<h2>Summary</h2>",
        table(headers, rows, left=2, row_classes=classes, cell_classes={len(headers) - 1: "verdict"}),
        '<h2>Charts</h2><div class="charts">',
        *(f'<img src="{png_uri(data)}" alt="{esc(name)}">' for name, data in chart_pngs.items()),
        "</div>",
    ]
    entries = gallery.entries() if gallery is not None else []
    if entries:
        buckets = [b for b in evaluation.baselines_by_size if any(e.bucket == b for e in entries)]
        body += [
            f"<h2>Worst explanations first</h2><p class=\"legend\">Per model and mask size the {gallery.per_bucket} "
            "images with the lowest IoU. Last tile: <span style=\"color:#28aa3c\">predicted and defect</span>, "
            "<span style=\"color:#dc3228\">predicted only</span>, <span style=\"color:#285ae6\">missed defect</span>."
            "</p>",
            f'<div class="controls">{_select("bucket", "mask size", buckets)}'
            f'{_select("model", "model", [m.label for m in evaluation.models])}<span id="shown"></span></div>',
            '<div class="gallery">', *(_card(e) for e in entries), "</div>",
        ]
    return page("Explanation evaluation", "".join(body), script=_FILTER_JS if entries else "")


# --------------------------------------------------------------------------- everything


@dataclass(frozen=True)
class ReportFiles:
    csv_path: Path
    chart_paths: list[Path]
    table_path: Path
    json_path: Path
    table_markdown: str
    html_path: Path | None = None


def summary_dict(evaluation: DatasetEvaluation) -> dict[str, Any]:
    data = dataclasses.asdict(dataclasses.replace(evaluation, files=None))
    data.pop("files")
    return data


def write_report(evaluation: DatasetEvaluation, out_dir: Path, *, csv_path: Path | None,
                 gallery: Gallery | None = None) -> DatasetEvaluation:
    """Write charts, table, JSON and the HTML page next to the CSV; returns the evaluation with its files."""
    table = markdown_table(evaluation)
    table_path = out_dir / TABLE_NAME
    table_path.write_text(table, encoding="utf-8")
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(summary_dict(evaluation), indent=2), encoding="utf-8")
    pngs = charts(evaluation)
    chart_paths = []
    for name, data in pngs.items():
        (out_dir / name).write_bytes(data)
        chart_paths.append(out_dir / name)
    html_path = out_dir / HTML_NAME
    html_path.write_text(html_report(evaluation, pngs, gallery), encoding="utf-8")
    files = ReportFiles(csv_path or out_dir / CSV_NAME, chart_paths, table_path, json_path, table, html_path)
    return dataclasses.replace(evaluation, files=files)
