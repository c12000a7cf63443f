"""Runs test_distributed.py in a fresh interpreter (it starts a fork server and rank processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_distributed_tests_pass_in_their_own_interpreter() -> None:
    env = dict(os.environ, ZDM_ISOLATED_DISTRIBUTED="1", HF_HUB_OFFLINE="1")
    target = str(Path(__file__).with_name("test_distributed.py"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10 and "skipped" not in summary, summary
