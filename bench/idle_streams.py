"""Idle streams against the served classifier: Classify p50 and Health.Check with N idle streams held open.

One run: ``python -m services.classifier`` in a subprocess (tiny test_resnet at 64 px, torch backend),
Classify p50 (one client, sequential calls) with no stream open, then with ``--streams`` idle streams
held open (half ClassifyStream that never send, half Health.Watch), then again after they closed.
Printed: ``loaded_over_idle_p50`` = p50 with the streams / mean p50 without (target <= 1.10), health
latency, and the calls that timed out. Last line: one JSON object.

Usage: ``python bench/idle_streams.py [--streams 1000] [--calls 200]``. Needs a Redis (as bench/classifier.py).
Run it against another tree (``PYTHONPATH=/other/tree python bench/idle_streams.py``) to measure before a change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH (another tree) wins

import cv2  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.classifier import _free_port, _redis_url, serving  # noqa: E402
from common.datasets.synthetic import render_part  # noqa: E402
from common.manifest import Manifest, Preprocessing  # noqa: E402
from common.models.zoo import build_model  # noqa: E402
from common.registry import Registry  # noqa: E402
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2  # noqa: E402

CALL_TIMEOUT = 3.0


def publish_tiny(registry: Registry, name: str = "idle-bench") -> None:
    """A tiny random test_resnet (64 px, 2 classes) as ``name`` version 1 (also used by bench/soak.py)."""
    torch.manual_seed(0)
    model = build_model("test_resnet", 2, pretrained=False, image_size=64)
    registry.publish(Manifest(name=name, architecture="test_resnet", timm_name="test_resnet",
                              classes=["def_front", "ok_front"], defect_class="def_front",
                              preprocessing=Preprocessing(image_size=64, mean=[0.5] * 3, std=[0.25] * 3)),
                     model.state_dict())


def classify_p50(stub: classifier_pb2_grpc.ClassifierStub, image: bytes, calls: int) -> tuple[float | None, int]:
    """(p50 ms over the answered calls, calls that failed or timed out); stops after 3 failures in a row."""
    times, failed, streak = [], 0, 0
    request = classifier_pb2.ClassifyRequest(image=common_pb2.Image(data=image))
    for _ in range(calls):
        start = time.perf_counter()
        try:
            stub.Classify(request, timeout=CALL_TIMEOUT)
            times.append((time.perf_counter() - start) * 1000)
            streak = 0
        except grpc.RpcError:
            failed += 1
            streak += 1
            if streak >= 3:
                break
    return (statistics.median(times) if times else None), failed


def health_ms(channel: grpc.Channel) -> float | None:
    start = time.perf_counter()
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    except grpc.RpcError:
        return None
    return (time.perf_counter() - start) * 1000


def hold_idle_streams(targets: list[grpc.Channel], count: int, stop: threading.Event) -> tuple[list, int]:
    """Open ``count`` idle streams round-robin over the channels; returns (calls, refused so far)."""
    def silent():  # a ClassifyStream request iterator that sends nothing until stop
        stop.wait()
        return
        yield

    calls = []
    for i in range(count):
        channel = targets[i % len(targets)]
        if i % 2:
            calls.append(classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(silent()))
        else:
            calls.append(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()))
    return calls, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200, help="Classify calls per phase")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after opening the streams")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="zdm-idle-"))
    publish_tiny(Registry(work / "registry"))
    url, embedded = _redis_url()
    port = _free_port()
    env = {"REDIS_URL": url, "ZDM_KEY_PREFIX": f"zdmbench:{os.getpid()}", "ZDM_REGISTRY": str(work / "registry"),
           "ZDM_CACHE_DIR": str(work / "cache"), "ZDM_LOG_LEVEL": "WARNING", "ZDM_CLASSIFIER_PORT": str(port),
           "ZDM_CLASSIFIER_HOST": "127.0.0.1", "ZDM_CLASSIFIER_BACKEND": "torch",
           "ZDM_CLASSIFIER_INFERENCE_THREADS": "1"}
    rng = np.random.default_rng(0)
    image = cv2.imencode(".png", render_part(rng, 64, ("pit",))[0])[1].tobytes()
    results: dict[str, object] = {"streams": args.streams, "cpus": os.cpu_count(),
                                  "loadavg_1m_at_start": os.getloadavg()[0]}
    try:
        with serving(env, port) as target:
            probe = grpc.insecure_channel(target)
            stub = classifier_pb2_grpc.ClassifierStub(probe)
            classify_p50(stub, image, 20)  # warm-up
            before, _ = classify_p50(stub, image, args.calls)
            stop = threading.Event()
            holders = [grpc.insecure_channel(target) for _ in range(8)]
            calls, _ = hold_idle_streams(holders, args.streams, stop)
            time.sleep(args.settle)
            refused = sum(1 for c in calls if c.done())  # calls that ended already (refused or failed)
            health_loaded = health_ms(probe)
            loaded, failed = classify_p50(stub, image, args.calls)
            stop.set()
            for call in calls:
                call.cancel()
            for channel in holders:
                channel.close()
            time.sleep(1.0)
            after, _ = classify_p50(stub, image, args.calls)
            probe.close()
        idle = (before + after) / 2
        results.update({
            "classify_p50_ms_no_streams": round(idle, 3),
            "classify_p50_ms_with_streams": None if loaded is None else round(loaded, 3),
            "loaded_over_idle_p50": None if loaded is None else round(loaded / idle, 3),
            "classify_failed_with_streams": failed,
            "health_check_ms_with_streams": None if health_loaded is None else round(health_loaded, 2),
            "streams_ended_early": refused,
        })
    finally:
        with contextlib.suppress(Exception):
            if embedded is not None:
                embedded.stop()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
