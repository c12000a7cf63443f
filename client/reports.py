"""HTML pages the CLI writes: the sweep's comparison table (one self-contained file, like the evaluation report)."""

from __future__ import annotations

from common.charts import Series, bar_chart
from common.html_page import esc, page, png_uri, table
from protos.zdm.v1 import trainer_pb2

SPLITS = ("test", "val", "train")


def _shown_split(row: trainer_pb2.SweepRow) -> object | None:
    """The row's test metrics, else val, else train (what the comparison is about)."""
    by_split = {m.split: m for m in row.metrics}
    return next((by_split[s] for s in SPLITS if s in by_split), None)


def sweep_rows(job: trainer_pb2.Job) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of a finished sweep's comparison (one row per child job)."""
    headers = ["architecture", "arm", "state", "split", "accuracy", "precision (w)", "recall (w)", "F1 (w)", "loss",
               "trainable params", "cosine to initial", "model", "job"]
    rows = []
    for row in job.result.sweep:
        m = _shown_split(row)
        state = trainer_pb2.JobState.Name(row.state).removeprefix("JOB_STATE_")
        model = f"{row.model.name} v{row.model.version}" if row.model.name else ""
        rows.append([row.architecture, row.arm, state, m.split if m else "",
                     *((m.accuracy, m.precision_weighted, m.recall_weighted, m.f1_weighted, m.loss) if m else [None] * 5),
                     f"{row.trainable_params:,}", row.cosine_to_initial, model, row.job_id])
    return headers, rows


def sweep_page(job: trainer_pb2.Job) -> str:
    """The sweep as one page: the comparison table and accuracy / F1 per architecture and arm."""
    headers, rows = sweep_rows(job)
    architectures = list(dict.fromkeys(r.architecture for r in job.result.sweep))
    arms = list(dict.fromkeys(r.arm for r in job.result.sweep))

    def values(metric: str, arm: str) -> list[float]:
        out = []
        for arch in architectures:
            row = next((r for r in job.result.sweep if r.architecture == arch and r.arm == arm), None)
            m = _shown_split(row) if row is not None else None
            out.append(float(getattr(m, metric)) if m is not None else 0.0)
        return out

    charts = [bar_chart(f"{title} per architecture and freeze policy", architectures,
                        [Series(arm, values(metric, arm)) for arm in arms], y_label=title)
              for metric, title in (("accuracy", "accuracy"), ("f1_weighted", "weighted F1"))]
    body = (f'<p class="meta">Sweep job {esc(job.job_id)}: {len(rows)} child job(s), state '
            f'{esc(trainer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"))}. Metrics of the test split when '
            f"the dataset has one, else validation.</p><h2>Comparison</h2>"
            f"{table(headers, rows, left=4, cell_classes={len(headers) - 2: 'l', len(headers) - 1: 'l'})}"
            '<h2>Charts</h2><div class="charts">'
            + "".join(f'<img src="{png_uri(c)}" alt="sweep chart {i + 1}">' for i, c in enumerate(charts)) + "</div>")
    return page("Training sweep", body)
