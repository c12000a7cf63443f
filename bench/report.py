"""What the evaluation report costs: EvaluateDataset's work with and without writing the report files.

In one run, on a synthetic annotated set (``--images`` defect images, 64 px) and the tiny registered
``test_resnet`` (random weights: the scores do not matter here, the work does), rounds alternate

* ``bare``: ``evaluate_dataset(..., out_dir=None)``: explain and score every image, write nothing;
* ``report``: the same with a folder: per-image CSV, summary table and JSON, five matplotlib charts,
  the worst-first gallery (thumbnails of the 8 worst images per model and size bucket) and report.html.

Times are CPU seconds of this process (``time.process_time``; torch on one thread), which a busy shared
machine disturbs far less than wall time. Printed: the median of each, the report's overhead as a ratio
(report / bare) and in seconds, the part of it the charts take (timed alone), and the size of report.html.
The last line is one JSON object.

Usage: ``python bench/report.py [--rounds 3] [--images 48] [--models 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.datasets.synthetic import generate_dataset  # noqa: E402
from common.registry import Registry  # noqa: E402
from services.explainer.annotated import find_annotated  # noqa: E402
from services.explainer.charts import charts  # noqa: E402
from services.explainer.engine import ExplainOptions  # noqa: E402
from services.explainer.evaluate import DatasetEvaluation, evaluate_dataset  # noqa: E402
from services.explainer.model_store import ExplainerModelStore  # noqa: E402
from tests.service.classifier_support import publish, random_state  # noqa: E402


def run(models, dataset, out_dir: Path | None) -> tuple[float, DatasetEvaluation]:
    if out_dir is not None:
        out_dir.mkdir()
    started = time.process_time()
    result = [e for e in evaluate_dataset(models, dataset, ExplainOptions(threshold=0.3), batch_size=16,
                                          out_dir=out_dir) if isinstance(e, DatasetEvaluation)]
    assert result, "no evaluation"
    return time.process_time() - started, result[0]


def time_charts(evaluation: DatasetEvaluation) -> float:
    started = time.process_time()
    charts(evaluation)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--models", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        syn = generate_dataset(root / "syn", train_per_class=1, test_per_class=args.images, size=64, seed=0)
        registry = Registry(root / "registry")
        for i in range(args.models):
            publish(registry, f"m{i}", random_state(i))
        store = ExplainerModelStore(registry, "", "production")
        models = [store.get(f"m{i}", 0, "") for i in range(args.models)]
        dataset = find_annotated(syn / "test", syn / "masks" / "test", "auto", 0)
        run(models, dataset, root / "warm")  # imports, font cache, first forward
        bare, report, chart = [], [], []
        for r in range(args.rounds):
            seconds, evaluation = run(models, dataset, None)
            bare.append(seconds)
            report.append(run(models, dataset, root / f"r{r}")[0])
            chart.append(time_charts(evaluation))
        html = (root / "r0" / "report.html").stat().st_size
    b, w, c = statistics.median(bare), statistics.median(report), statistics.median(chart)
    print(f"{args.images} images x {args.models} models, {args.rounds} rounds (medians)")
    print(f"  bare evaluation      {b:7.2f} CPU s")
    print(f"  with report files    {w:7.2f} CPU s   (x{w / b:.2f}, +{w - b:.2f} s)")
    print(f"  of which the charts  {c:7.2f} CPU s   (5 matplotlib PNGs)")
    print(f"  report.html          {html / 1e6:7.2f} MB")
    print(json.dumps({"images": args.images, "models": args.models, "bare_cpu_s": round(b, 3), "report_cpu_s": round(w, 3),
                      "report_over_bare": round(w / b, 3), "report_extra_cpu_s": round(w - b, 3),
                      "charts_cpu_s": round(c, 3),
                      "html_bytes": html}))


if __name__ == "__main__":
    main()
