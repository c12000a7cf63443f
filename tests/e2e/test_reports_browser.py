"""The evaluation report opened in headless Chromium: no console errors, every image loads, the filter works."""

from __future__ import annotations

import csv
import re

import grpc

from common.datasets.synthetic import generate_dataset
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from protos.zdm.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc
from services.explainer.__main__ import build
from tests.browser_support import chromium_path, render
from tests.service.classifier_support import publish, random_state


def _evaluate(tmp_path) -> explainer_pb2.DatasetSummary:
    data = tmp_path / "data"
    syn = generate_dataset(data / "syn", train_per_class=1, test_per_class=10, size=64, seed=5)
    settings = ExplainerSettings(port=0, batch_size=4, output_root=tmp_path / "reports",
                                 common=CommonSettings(registry=tmp_path / "registry", data_roots=[data]))
    server, _ = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        registry = Registry(settings.common.registry)
        publish(registry, "frozen", random_state(0))
        publish(registry, "unfrozen", random_state(1))
        events = list(explainer_pb2_grpc.ExplainerStub(channel).EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(
            images_path=str(syn / "test"), masks_path=str(syn / "masks" / "test"), threshold=0.3,
            models=[common_pb2.ModelRef(name="frozen"), common_pb2.ModelRef(name="unfrozen")], output_dir="run")))
    finally:
        channel.close()
        server.stop(0)
    return events[-1].summary


def test_evaluation_report_renders_in_headless_chromium(tmp_path) -> None:
    chromium_path()  # skip early, before the evaluation, when there is no browser
    summary = _evaluate(tmp_path)
    report = tmp_path / "reports" / "run" / "report.html"
    assert summary.report_html_path == str(report)
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch

    with open(summary.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    worst = min(rows, key=lambda r: float(r["iou"]))
    cards = re.findall(r'<div class="name" title="([^"]+)"', text)
    assert cards and cards[0] == worst["image"]  # worst first
    first_iou = re.search(r'<div class="scores">iou ([0-9.]+)', text)
    assert first_iou and abs(float(first_iou.group(1)) - float(worst["iou"])) < 1e-3

    buckets = sorted({r["mask_size"] for r in rows})
    per_bucket: dict[str, int] = {}

    def filter_each_bucket(page) -> None:
        for bucket in buckets:
            page.select_option("#bucket", bucket)
            per_bucket[bucket] = page.locator(".card:not(.hidden)").count()
            shown = page.locator(".card:not(.hidden)").evaluate_all("cs => cs.map(c => c.dataset.bucket)")
            assert set(shown) == {bucket}
        page.select_option("#bucket", "*")

    rendered = render(report, tmp_path / "evaluation-report.png", actions=filter_each_bucket)
    assert rendered.console_errors == []
    assert rendered.broken_images == []
    charts = 5
    assert rendered.images == charts + 4 * len(cards)  # four tiles per gallery card
    for bucket in buckets:  # per model the worst 8 of each bucket (all of them when it holds fewer)
        expected = sum(min(8, sum(1 for r in rows if r["mask_size"] == bucket and r["model"] == model))
                       for model in ("frozen", "unfrozen"))
        assert per_bucket[bucket] == expected
    assert rendered.screenshot.stat().st_size > 10_000
