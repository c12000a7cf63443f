"""The `zdm` commands over the SDK against real in-process services (real channels, Redis, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.cli import app
from client.sdk import parse_model_ref
from common.datasets.synthetic import generate_dataset
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from services.explainer.__main__ import build as build_explainer
from tests.browser_support import render
from tests.service.classifier_support import Running, publish, random_state, settings_for
from tests.service.trainer_support import ARCH, make_dataset, make_settings, trainer_harness


def zdm(*args: str, env: dict[str, str], ok: bool = True):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "220", **env})
    if ok:
        assert result.exit_code == 0, f"zdm {' '.join(args)} -> {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def test_model_refs_parse_and_bad_ones_fail() -> None:
    assert (parse_model_ref("m:3").name, parse_model_ref("m:3").version) == ("m", 3)
    assert parse_model_ref("m@production").alias == "production" and parse_model_ref("").name == ""
    for bad in ("m:0", "m:x", ":3", "m@"):
        with pytest.raises(ValueError):
            parse_model_ref(bad)


# -- explainer: evaluate, search --------------------------------------------------------------------
@pytest.fixture
def explainer(tmp_path):
    data = tmp_path / "data"
    syn = generate_dataset(data / "syn", train_per_class=1, test_per_class=6, size=64, seed=2)
    settings = ExplainerSettings(port=0, batch_size=4, output_root=tmp_path / "reports",
                                 common=CommonSettings(registry=tmp_path / "registry", data_roots=[data]))
    registry = Registry(settings.common.registry)
    publish(registry, "a", random_state(0))
    publish(registry, "b", random_state(1))
    server, _ = build_explainer(settings)
    yield {"ZDM_EXPLAINER_ADDR": f"127.0.0.1:{server.port}"}, syn, registry, tmp_path
    server.stop(0)


def test_evaluate_writes_the_report_and_prints_json(explainer) -> None:
    env, syn, _, tmp = explainer
    images, masks = str(syn / "test"), str(syn / "masks" / "test")
    result = zdm("evaluate", images, masks, "--model", "a", "--model", "b:1", "--threshold", "0.3",
                 "--output-dir", "cli-run", "--json", env=env)
    summary = json.loads(result.stdout)  # stdout holds only the JSON (the progress bar is on stderr)
    assert [m["model"]["name"] for m in summary["models"]] == ["a", "b"]
    assert summary["report_html_path"] == str(tmp / "reports" / "cli-run" / "report.html")
    assert Path(summary["report_html_path"]).is_file()
    assert all(m["overall"]["images"] == 6 for m in summary["models"])

    table = zdm("evaluate", images, masks, "--model", "a", "--threshold", "0.3", env=env)
    assert "whole image (baseline)" in table.stdout and "report: " in table.stdout

    bad = zdm("evaluate", images, masks, "--model", "nope", env=env, ok=False)
    assert bad.exit_code == 1 and "NOT_FOUND" in bad.output


def test_search_lists_candidates_and_stores_nothing_unasked(explainer) -> None:
    env, syn, registry, _ = explainer
    before = registry.resolve("a").explanation
    result = zdm("search", str(syn / "test"), str(syn / "masks" / "test"), "--model", "a",
                 "--layer", "layer4", "--threshold", "0.2", "--threshold", "0.6", "--json", env=env)
    found = json.loads(result.stdout)
    assert {(c["layer"], round(c["threshold"], 3)) for c in found["candidates"]} == {("layer4", 0.2), ("layer4", 0.6)}
    best = max(found["candidates"], key=lambda c: (c["score"], -c["predicted_area"]))
    assert found["best"]["threshold"] == pytest.approx(best["threshold"])
    assert not found.get("stored", False)
    assert registry.resolve("a").explanation == before  # --store not given
    text = zdm("search", str(syn / "test"), str(syn / "masks" / "test"), "--model", "a", "--layer", "layer4",
               "--threshold", "0.2", env=env)
    assert "best: layer4 at threshold 0.2" in text.stdout


# -- classifier: threshold, audit -------------------------------------------------------------------
def test_threshold_get_set_and_audit(tmp_path, redis_url, key_prefix) -> None:
    settings = settings_for(tmp_path, redis_url, key_prefix)
    publish(Registry(settings.common.registry), "casting", random_state(0))
    data = generate_dataset(tmp_path / "syn", train_per_class=1, test_per_class=2, size=64, seed=1)
    running = Running(settings, redis_url)
    env = {"ZDM_CLASSIFIER_ADDR": f"127.0.0.1:{running.app.port}"}
    try:
        got = json.loads(zdm("threshold", "get", "casting", "--json", env=env).stdout)
        assert (got["name"], got["version"]) == ("casting", 1) and got["threshold"] == pytest.approx(0.5)
        zdm("threshold", "set", "casting", "0.8", env=env)
        assert json.loads(zdm("threshold", "get", "casting:1", "--json", env=env).stdout)["threshold"] == \
            pytest.approx(0.8)
        bad = zdm("threshold", "set", "casting", "1.5", env=env, ok=False)
        assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output

        files = sorted((data / "test").rglob("*.png"))[:3]
        zdm("classify", *map(str, files), "--part-id", "part-7", env=env)
        records = json.loads(zdm("audit", "--part-id", "part-7", "--json", env=env).stdout)
        assert len(records) == 3 and {r["part_id"] for r in records} == {"part-7"}
        assert all(r["threshold"] == pytest.approx(0.8) for r in records)
        assert json.loads(zdm("audit", "--part-id", "other", "--json", env=env).stdout) == []
        assert "3 record(s)" in zdm("audit", "--part-id", "part-7", env=env).stdout
    finally:
        running.close()


# -- trainer: models compare, train sweep -----------------------------------------------------------
def test_models_compare_and_a_sweep_with_its_html_page(tmp_path, redis_url, redis_client, key_prefix,
                                                       registry_root) -> None:
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    dataset = make_dataset(settings, train_per_class=6, test_per_class=2)
    registry = Registry(registry_root)
    publish(registry, "x", random_state(0))
    publish(registry, "x", random_state(0))
    publish(registry, "y", random_state(1))
    with trainer_harness(settings, redis_client) as harness:
        env = {"ZDM_TRAINER_ADDR": harness.address}
        same = json.loads(zdm("models", "compare", "x:1", "x:2", "--json", env=env).stdout)
        assert same["cosine_similarity"] == pytest.approx(1.0) and same["compared_tensors"] > 0
        other = json.loads(zdm("models", "compare", "x", "y", "--json", env=env).stdout)
        assert other["cosine_similarity"] < 0.999
        missing = zdm("models", "compare", "x", "nope", env=env, ok=False)
        assert missing.exit_code == 1 and "NOT_FOUND" in missing.output

        page = tmp_path / "sweep.html"
        with harness.running_worker(burst=False):
            result = zdm("train", "sweep", str(dataset), "--architecture", ARCH, "--arm", "frozen", "--arm",
                         "unfrozen:0.001", "--weights", "random", "--epochs", "1", "--batch-size", "8",
                         "--image-size", "32", "--name", "sw", "--html", str(page), "--json", env=env)
        job = json.loads(result.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED"
        rows = job["result"]["sweep"]
        assert sorted(r["arm"] for r in rows) == ["frozen", "unfrozen"]
        text = page.read_text()
        for row in rows:
            assert row["job_id"] in text
        frozen = next(r for r in rows if r["arm"] == "frozen")
        unfrozen = next(r for r in rows if r["arm"] == "unfrozen")
        assert int(frozen["trainable_params"]) < int(unfrozen["trainable_params"])
    try:
        rendered = render(page, tmp_path / "sweep-page.png")
    except pytest.skip.Exception:
        return  # no browser here: the page's content was checked above
    assert rendered.console_errors == [] and rendered.broken_images == [] and rendered.images == 2
