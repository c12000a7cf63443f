"""Files of a dataset evaluation: per-image CSV, bar charts (PNG), a markdown table and a JSON summary.

Charts follow the thesis's Figures 5.17–5.19 (IoU, IoP and IoGT per model), drawn with OpenCV so the
service needs no plotting library: per model a bar for the mean and one for the pooled score, the
trivial baselines (whole image, centred disc) as dashed reference lines. Two more charts: the pointing
game against its chance level, and mean IoU per mask-size bucket beside the whole-image baseline.

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

import cv2
import numpy as np

from common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from common.manifest import Manifest
from common.overlap import SetScores

if TYPE_CHECKING:
    from services.explainer.engine import Explanation, Resolved
    from services.explainer.evaluate import Baselines, DatasetEvaluation

CSV_NAME = "per_image.csv"
TABLE_NAME = "summary.md"
JSON_NAME = "summary.json"
OWNER_MARKER = ".zdm-report"  # in every folder the explainer made for reports
METRICS = (("iou", "IoU"), ("iop", "IoP"), ("iogt", "IoGT"))


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


# --------------------------------------------------------------------------- charts

_BG = (255, 255, 255)
_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_SERIES_COLOURS = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140))
_REFERENCE_COLOURS = ((60, 60, 60), (34, 34, 178), (0, 140, 200))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]  # one per group


@dataclass(frozen=True)
class Reference:
    """A dashed line: one value for all groups, or one per group."""

    label: str
    values: Sequence[float]


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, colour=_INK, thick: int = 1,
          centre: bool = False) -> None:
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, thick)
    x = org[0] - w // 2 if centre else org[0]
    cv2.putText(img, text, (x, org[1]), _FONT, scale, colour, thick, cv2.LINE_AA)


def _dashed(img: np.ndarray, x0: int, x1: int, y: int, colour: tuple[int, int, int], dash: int = 8) -> None:
    for x in range(x0, x1, dash * 2):
        cv2.line(img, (x, y), (min(x + dash, x1), y), colour, 2, cv2.LINE_AA)


def _wrap(label: str, max_chars: int, max_lines: int = 4) -> list[str]:
    """Word-wrap ``label`` (long words cut into pieces); '...' ends a label that needs more lines."""
    pieces = [w[i:i + max_chars] for w in label.split() for i in range(0, len(w), max_chars)]
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= max_chars:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:max(0, max_chars - 3)] + "..."
    return lines or [""]


def bar_chart(title: str, groups: Sequence[str], series: Sequence[Series], references: Sequence[Reference] = (),
              y_label: str = "", y_max: float = 1.0) -> np.ndarray:
    """A grouped bar chart as a BGR image; values are printed above the bars, references are dashed lines
    (across the plot when one value is given, else one segment per group)."""
    n_groups, n_series = max(1, len(groups)), max(1, len(series))
    bar_w = 36 if n_series * n_groups <= 12 else 24
    left, right, top, axis_h, labels_h = 70, 30, 60, 300, 90
    width = max(560, left + right + n_groups * (n_series * bar_w + 50))
    group_w = (width - left - right) / n_groups
    legend_h = 22 * (len(series) + len(references)) + 10
    height = top + axis_h + labels_h + legend_h
    img = np.full((height, width, 3), _BG, np.uint8)
    y0 = top + axis_h  # pixel row of value 0

    def ypix(v: float) -> int:
        return int(round(y0 - axis_h * min(max(v, 0.0), y_max) / y_max))

    def colour(palette: tuple[tuple[int, int, int], ...], i: int) -> tuple[int, int, int]:
        return palette[i % len(palette)]

    _text(img, title, (width // 2, 30), 0.6, thick=2, centre=True)
    for k in range(6):
        v = y_max * k / 5
        cv2.line(img, (left, ypix(v)), (width - right, ypix(v)), _GRID, 1)
        _text(img, f"{v:.1f}", (left - 40, ypix(v) + 5))
    if y_label:
        _text(img, y_label, (8, top - 14))
    for r_i, ref in enumerate(references):
        if len(set(ref.values)) == 1 or len(ref.values) != len(groups):
            _dashed(img, left, width - right, ypix(float(ref.values[0])), colour(_REFERENCE_COLOURS, r_i))
    for g, name in enumerate(groups):
        centre = left + group_w * (g + 0.5)
        gx = int(round(centre - n_series * bar_w / 2))
        for r_i, ref in enumerate(references):
            if len(ref.values) == len(groups) and len(set(ref.values)) > 1:
                _dashed(img, gx - 10, gx + n_series * bar_w + 10, ypix(float(ref.values[g])),
                        colour(_REFERENCE_COLOURS, r_i))
        for s_i, s in enumerate(series):
            x = gx + s_i * bar_w
            v = float(s.values[g])
            cv2.rectangle(img, (x + 3, ypix(v)), (x + bar_w - 3, y0), colour(_SERIES_COLOURS, s_i), -1)
            _text(img, f"{v:.2f}", (x + bar_w // 2, ypix(v) - 5), 0.38, centre=True)
        for line_no, part in enumerate(_wrap(name, max(10, int(group_w) // 8))):
            _text(img, part, (int(centre), y0 + 20 + 17 * line_no), 0.42, centre=True)
    cv2.line(img, (left, y0), (width - right, y0), _INK, 1)
    cv2.line(img, (left, top), (left, y0), _INK, 1)
    ly = y0 + labels_h
    for s_i, s in enumerate(series):
        cv2.rectangle(img, (left, ly + 22 * s_i), (left + 16, ly + 22 * s_i + 12), colour(_SERIES_COLOURS, s_i), -1)
        _text(img, s.label, (left + 24, ly + 22 * s_i + 11))
    for r_i, ref in enumerate(references):
        y = ly + 22 * (len(series) + r_i) + 6
        _dashed(img, left, left + 16, y, colour(_REFERENCE_COLOURS, r_i), dash=4)
        _text(img, ref.label, (left + 24, y + 5))
    return img


def _write_png(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - uint8 BGR always encodes
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())
    return path


def charts(evaluation: DatasetEvaluation) -> dict[str, np.ndarray]:
    """Chart file name -> BGR image."""
    labels = [m.label for m in evaluation.models]
    b = evaluation.baselines
    out: dict[str, np.ndarray] = {}
    for key, name in METRICS:
        out[f"{key}.png"] = bar_chart(
            f"{name} per model ({evaluation.images} images)", labels,
            [Series(f"mean {name}", [getattr(m.overall, f"mean_{key}") for m in evaluation.models]),
             Series(f"pooled {name}", [getattr(m.overall, f"pooled_{key}") for m in evaluation.models])],
            [Reference(f"whole image (mean {getattr(b.whole_image, f'mean_{key}'):.2f})",
                       [getattr(b.whole_image, f"mean_{key}")]),
             Reference(f"centred disc (mean {getattr(b.centred_disc, f'mean_{key}'):.2f})",
                       [getattr(b.centred_disc, f"mean_{key}")])],
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


# --------------------------------------------------------------------------- everything


@dataclass(frozen=True)
class ReportFiles:
    csv_path: Path
    chart_paths: list[Path]
    table_path: Path
    json_path: Path
    table_markdown: str


def summary_dict(evaluation: DatasetEvaluation) -> dict[str, Any]:
    data = dataclasses.asdict(dataclasses.replace(evaluation, files=None))
    data.pop("files")
    return data


def write_report(evaluation: DatasetEvaluation, out_dir: Path, *, csv_path: Path | None) -> DatasetEvaluation:
    """Write charts, table and JSON next to the CSV; returns the evaluation with its files."""
    table = markdown_table(evaluation)
    table_path = out_dir / TABLE_NAME
    table_path.write_text(table, encoding="utf-8")
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(summary_dict(evaluation), indent=2), encoding="utf-8")
    chart_paths = [_write_png(out_dir / name, img) for name, img in charts(evaluation).items()]
    files = ReportFiles(csv_path or out_dir / CSV_NAME, chart_paths, table_path, json_path, table)
    return dataclasses.replace(evaluation, files=files)
