"""Run the atheris decode fuzzer (tests/fuzz/fuzz_decode.py) for a few seconds; skipped without atheris."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("ZDM_FUZZ_SECONDS", "5"))
# A fixed seed keeps the suite reproducible (the same inputs every run); ZDM_FUZZ_SEED=0 lets libFuzzer pick one.
SEED = int(os.environ.get("ZDM_FUZZ_SEED", "1"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install .[fuzz])")
def test_decode_fuzzer_finds_nothing_in_a_few_seconds(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    seeds = ROOT / "tests" / "corpus" / "files"  # second: libFuzzer writes new inputs into the first folder only
    cmd = [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_decode.py"), str(work), str(seeds),
           f"-max_total_time={SECONDS}", f"-seed={SEED}", "-rss_limit_mb=1500", "-timeout=10",
           f"-artifact_prefix={tmp_path}/"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=SECONDS + 120)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-", "leak-")))
    assert done.returncode == 0 and not crashes, (crashes, done.stderr[-3000:])
    assert "Done" in done.stderr and "runs in" in done.stderr
