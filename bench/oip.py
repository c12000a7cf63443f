"""Open Inference Protocol vs zdm.v1 on the same served classifier, in one run.

``python -m services.classifier`` runs in a subprocess (ResNet18, 2 classes, random weights, 224 px,
the casting test JPEGs when ../shared/data is there, else synthetic 300x300 parts). Against it, in
alternating phases so that load from other processes falls on both alike:

1. latency, one client, one image per call, alternating blocks of ``Classify`` (zdm.v1 stub) and
   ``ModelInfer`` (the real ``tritonclient.grpc`` client, one BYTES element): p50 / p99;
2. throughput, 8 concurrent single-image clients per protocol (one channel each): images per second.

Both protocols run the same verdict path on the server (batcher, backend, threshold, audit), so the
difference is the protocol's own cost: tritonclient's request building and response parsing, and the
server's tensor translation. The last line is one JSON object; ``oip_over_zdm_img_s`` (target >= 0.9)
and ``oip_minus_zdm_p50_ms`` (pooled over all latency blocks, target <= 1.0) are the figures to watch;
``oip_minus_zdm_matched_ms`` (median of call-by-call differences between neighbouring blocks) shows how
much of that is noise. Verdicts of both are compared
on every image first (``verdicts_agree``).

Usage: ``python bench/oip.py [--seconds 5] [--rounds 2] [--images 64] [--backend auto]``.
This process must not import protos.inference: tritonclient defines the same protobuf package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402

from bench.classifier import _free_port, _pct, _redis_url, delete_prefix, load_jpegs, publish_model, serving, wait_for_quiet  # noqa: E402
from common.registry import Registry  # noqa: E402
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2  # noqa: E402

CLIENTS = 8
BLOCK = 20


class Zdm:
    """zdm.v1 Classify clients, one channel each."""

    def __init__(self, target: str, images: list[bytes], clients: int) -> None:
        self.requests = [classifier_pb2.ClassifyRequest(image=common_pb2.Image(data=b)) for b in images]
        self.channels = [grpc.insecure_channel(target) for _ in range(clients)]
        self.stubs = [classifier_pb2_grpc.ClassifierStub(c) for c in self.channels]

    def call(self, k: int, i: int) -> tuple[float, bool]:
        verdict = self.stubs[k].Classify(self.requests[i % len(self.requests)], timeout=30)
        return verdict.defect_probability, verdict.defective

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class Oip:
    """tritonclient ModelInfer clients (BYTES input of one encoded image), one channel each."""

    def __init__(self, target: str, model: str, images: list[bytes], clients: int) -> None:
        self.model = model
        self.images = [np.array([b], dtype=np.object_) for b in images]
        self.clients = [triton.InferenceServerClient(target) for _ in range(clients)]
        self.outputs = [triton.InferRequestedOutput(n) for n in ("defect_probability", "defective")]

    def call(self, k: int, i: int) -> tuple[float, bool]:
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(self.images[i % len(self.images)])
        result = self.clients[k].infer(self.model, [tensor], outputs=self.outputs, client_timeout=30)
        return float(result.as_numpy("defect_probability")[0]), bool(result.as_numpy("defective")[0])

    def close(self) -> None:
        for client in self.clients:
            client.close()


Call = Callable[[int, int], tuple[float, bool]]


def throughput(call: Call, clients: int, seconds: float) -> float:
    counts = [0] * clients
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                call(k, i)
            except Exception as exc:  # noqa: BLE001 - reported after the phase
                errors.append(exc)
                return
            counts[k] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(1.0, seconds / 4))
    before, t0 = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - before, time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(60)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed: {errors[0]}")
    return done / elapsed


def alternating_latencies(zdm: Call, oip: Call, seconds: float) -> tuple[list[float], list[float]]:
    zdm_ms: list[float] = []
    oip_ms: list[float] = []
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or len(zdm_ms) < 2 * BLOCK:
        for side, out in ((zdm, zdm_ms), (oip, oip_ms)):
            for k in range(BLOCK):
                start = time.perf_counter()
                side(0, i + k)
                out.append((time.perf_counter() - start) * 1000)
        i += BLOCK
    return zdm_ms, oip_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quiet-pressure", type=float, default=0.0, help="wait for CPU pressure (PSI) below this")
    parser.add_argument("--work", type=Path, default=None, help="work folder (reused: the converted model is cached)")
    args = parser.parse_args()

    images, source = load_jpegs(args.images)
    work = args.work or Path(tempfile.mkdtemp(prefix="zdm-bench-oip-"))
    registry = Registry(work / "registry")
    manifest = registry.newest() or publish_model(registry)
    url, embedded = _redis_url()
    prefix = f"zdmbench:oip:{os.getpid()}"
    port = _free_port()
    env = {
        "REDIS_URL": url,
        "ZDM_KEY_PREFIX": prefix,
        "ZDM_REGISTRY": str(work / "registry"),
        "ZDM_CACHE_DIR": str(work / "cache"),
        "ZDM_LOG_LEVEL": "WARNING",
        "ZDM_CLASSIFIER_PORT": str(port),
        "ZDM_CLASSIFIER_BACKEND": args.backend,
    }
    print(f"images: {source}; model resnet18/224, backend {args.backend}; {os.cpu_count()} CPUs", flush=True)
    rounds: dict[str, list[float]] = {"zdm": [], "oip": []}
    zdm_lat: list[float] = []
    oip_lat: list[float] = []
    try:
        with serving(env, port) as target:
            zdm, oip = Zdm(target, images, CLIENTS), Oip(target, manifest.name, images, CLIENTS)
            try:
                pairs = [(zdm.call(0, i), oip.call(0, i)) for i in range(len(images))]  # also warms both paths
                agree = all(z[1] == o[1] and abs(z[0] - o[0]) < 1e-6 for z, o in pairs)
                for r in range(args.rounds):
                    wait_for_quiet(args.quiet_pressure, 120.0)
                    rounds["zdm"].append(throughput(zdm.call, CLIENTS, args.seconds))
                    rounds["oip"].append(throughput(oip.call, CLIENTS, args.seconds))
                    z_ms, o_ms = alternating_latencies(zdm.call, oip.call, args.seconds)
                    zdm_lat += z_ms
                    oip_lat += o_ms
                    print(
                        f"round {r + 1}: zdm.v1 {rounds['zdm'][-1]:.1f} img/s, OIP {rounds['oip'][-1]:.1f} img/s; "
                        f"p50 zdm.v1 {statistics.median(z_ms):.2f} ms, OIP {statistics.median(o_ms):.2f} ms",
                        flush=True,
                    )
            finally:
                zdm.close()
                oip.close()
    finally:
        delete_prefix(url, prefix)
        if embedded is not None:
            embedded.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    results: dict[str, object] = {
        "images": source,
        "cpus": os.cpu_count(),
        "verdicts_agree": agree,
        "zdm_img_s": max(rounds["zdm"]),
        "oip_img_s": max(rounds["oip"]),
        "zdm_p50_ms": statistics.median(zdm_lat),
        "oip_p50_ms": statistics.median(oip_lat),
        # Call k of an OIP block against call k of the zdm.v1 block just before it: robust to load drifting.
        "oip_minus_zdm_matched_ms": statistics.median(o - z for o, z in zip(oip_lat, zdm_lat, strict=True)),
        "zdm_p99_ms": _pct(zdm_lat, 99),
        "oip_p99_ms": _pct(oip_lat, 99),
        "per_round_oip_over_zdm": [o / z for o, z in zip(rounds["oip"], rounds["zdm"], strict=True)],
        "loadavg_1m_at_end": os.getloadavg()[0],
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
    }
    results["oip_over_zdm_img_s"] = results["oip_img_s"] / results["zdm_img_s"]  # type: ignore[operator]
    results["oip_minus_zdm_p50_ms"] = results["oip_p50_ms"] - results["zdm_p50_ms"]  # type: ignore[operator]
    results["targets_met"] = bool(
        agree and results["oip_over_zdm_img_s"] >= 0.9 and results["oip_minus_zdm_p50_ms"] <= 1.0  # type: ignore[operator]
    )
    for key, value in results.items():
        print(f"  {key:>24}: {value:.3f}" if isinstance(value, float) else f"  {key:>24}: {value}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}), flush=True)


if __name__ == "__main__":
    main()
