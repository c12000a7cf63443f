"""The thesis study script end to end on a tiny synthetic dataset: one command, one markdown report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_study_trains_every_policy_and_writes_one_report(tmp_path) -> None:
    out = tmp_path / "study"
    command = [sys.executable, str(REPO / "scripts" / "thesis_study.py"), "--synthetic", str(tmp_path / "data"),
               "--architectures", "test_resnet", "--policies", "frozen", "unfrozen", "--recipes", "fair",
               "--epochs", "1", "--image-size", "32", "--synthetic-per-class", "8", "--max-batches", "2",
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["models"] == 2
    text = (out / "study.md").read_text()
    for policy in ("frozen", "unfrozen"):
        rows = [line for line in text.splitlines() if line.startswith(f"| test_resnet {policy} (fair)")]
        assert {row.split(" | ")[3] for row in rows} >= {"train", "test"}, text
        for row in rows:
            accuracy = float(row.split(" | ")[4])
            assert 0.0 <= accuracy <= 100.0
    cosine = re.findall(r"^\| (frozen|unfrozen) \| ([0-9.]+) \| ([0-9.]+) \|$", text, re.M)
    assert [c[0] for c in cosine] == ["frozen", "unfrozen"]
    assert float(cosine[0][1]) == 1.0 and float(cosine[1][2]) == 1.0 and float(cosine[0][2]) < 1.0
    assert "*whole image*" in text and "*pointing chance*" in text and "pixel AUC" in text
    summary = json.loads((out / "study.json").read_text())
    frozen, unfrozen = summary["models"]
    assert frozen["trainable_share"] < unfrozen["trainable_share"] == 1.0
    assert (out / "explain" / "per_image.csv").exists() and list((out / "explain").glob("*.png"))
