"""`zdm up --metrics` as real processes: curl each service's /metrics port; JSON logs on request."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

from client.stack import SERVICES, free_port
from tests.e2e.zdm_up_support import start_zdm_up, wait_until_up

OWN_SERIES = {  # a series only that service exports, present before any call
    "trainer": "# TYPE zdm_trainer_queue_depth gauge",
    "classifier": "# TYPE zdm_classifier_audit_buffer gauge",
    "explainer": "# TYPE zdm_explainer_explain_seconds histogram",
}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def test_zdm_up_metrics_serves_each_service_and_logs_json(tmp_path, redis_url, key_prefix) -> None:
    metrics = {s: free_port() for s in SERVICES}
    env = dict(os.environ, REDIS_URL=redis_url, ZDM_KEY_PREFIX=key_prefix, ZDM_LOG_FORMAT="json",
               **{f"ZDM_{s.upper()}_PORT": str(free_port()) for s in SERVICES},
               **{f"ZDM_{s.upper()}_METRICS_PORT": str(p) for s, p in metrics.items()})
    proc = start_zdm_up(["--metrics", "--home", str(tmp_path / "home")], env)
    try:
        seen = wait_until_up(proc)
        for service, port in metrics.items():
            assert f"metrics http://127.0.0.1:{port}/metrics" in seen
            text = _get(f"http://127.0.0.1:{port}/metrics")
            assert OWN_SERIES[service] in text, service
            assert "process_cpu_seconds_total" in text and "python_info{" in text
            assert "grpc_server_started_total" in text  # health checks of `zdm up` itself were counted
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    service_lines = [line.split("] ", 1)[1] for line in (seen + out).splitlines()
                     if line.startswith("[trainer") and "] {" in line]
    entries = [json.loads(line) for line in service_lines]
    assert entries and all(e["service"] == "trainer" and e["level"] and e["message"] for e in entries)
