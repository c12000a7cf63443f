"""`zdm up` as a real process group for the end-to-end tests: start it and wait until its stack is up."""

from __future__ import annotations

import subprocess
import sys
import time


def start_zdm_up(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m client.cli up ARGS`` in its own session (so the test can signal the whole group)."""
    return subprocess.Popen([sys.executable, "-m", "client.cli", "up", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_until_up(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """Read its output until it says how to stop it; returns what it printed so far."""
    deadline = time.monotonic() + timeout
    seen = ""
    while "Ctrl-C stops" not in seen:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"zdm up exited early:\n{seen}"
        seen += line
        assert time.monotonic() < deadline, seen
    return seen
