"""Classifier benchmark: in-process pipeline vs the gRPC-served classifier, on the same CPU.

In one run, with ResNet18 (2 classes, random weights: speed does not depend on them) at 224 px
from 300x300 JPEGs (the casting test split when ../shared/data is there, else synthetic parts):

1. in-process pipeline, JPEG bytes -> verdict: decode + preprocess (common.images) and the best
   backend (the service's own backend factory) at batch 32, single thread of control;
2. the served classifier (``python -m services.classifier`` in a subprocess) with 8 concurrent
   single-image clients (one channel each, threads of this process);
3. latency p50 / p99 with one client, against the in-process pipeline at batch 1, in alternating
   blocks of calls (a block of in-process calls, then a block of served calls, ...). Blocks rather
   than call-by-call pairs: right after an in-process inference this process's own inference threads
   still hold the cores for a while, which would bill the bench's engine to the served call;
4. the transport floor: the same single-client calls against a bare Python gRPC server (bench/grpc_echo.py)
   whose handler only waits the in-process p50 (``grpc_echo_overhead_p50_ms``).

The last line of output is one JSON object with every figure; the targets are
``served_over_inprocess`` >= 0.8 and ``p50_minus_inprocess_b1_ms`` <= 1.0.

The JSON also says which backend served and what it was verified on (``verified_on``,
``rejected_backends``: candidates the verification turned down). With ``--work DIR`` holding a
``registry/`` with a trained version and its verification set, the figures are those of the backend
that reproduces it (throughput at zero verdict flips); the default random-weights model has no set and
is checked on random inputs only.

Usage: ``python bench/classifier.py [--seconds 10] [--images 256] [--backend auto] [--work DIR]``.
Needs a Redis (REDIS_URL, else 127.0.0.1:6379, else an embedded one is started).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # we fork the server while channels exist

import cv2  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from grpc_echo import EchoFloor  # a sibling: bench scripts run as files, their folder is on sys.path
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from common.images import decode_image, preprocess_batch  # noqa: E402
from common.manifest import Manifest, Preprocessing  # noqa: E402
from common.models.zoo import build_model  # noqa: E402
from common.redis_conn import EmbeddedRedis, connect  # noqa: E402
from common.registry import Registry  # noqa: E402
from common.settings import ClassifierSettings, CommonSettings  # noqa: E402
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2  # noqa: E402
from services.classifier.model_store import backend_factory  # noqa: E402

CASTING_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "casting" / "test"
CLASSES = ["def_front", "ok_front"]
MEAN, STD = [0.5643] * 3, [0.2386] * 3  # casting training-split statistics (docs/design.md)
IMAGE_SIZE = 224
BATCH = 32
CLIENTS = 8
LATENCY_BLOCK = 25  # calls per side before the latency phase switches sides


def load_jpegs(count: int) -> tuple[list[bytes], str]:
    """Encoded 300x300 JPEGs: the casting test split if present (read in place, never copied)."""
    if CASTING_TEST.is_dir():
        files = sorted(CASTING_TEST.glob("*/*.jpeg"))[:count]
        if files:
            return [f.read_bytes() for f in files], f"casting test split ({len(files)} JPEGs)"
    from common.datasets.synthetic import render_part

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        img, _ = render_part(rng, 300, ("pit",) if i % 2 else ())
        images.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return images, f"synthetic parts ({count} JPEGs, 300x300)"


def publish_model(registry: Registry) -> Manifest:
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES), pretrained=False, image_size=IMAGE_SIZE)
    manifest = Manifest(
        name="bench-resnet18",
        architecture="resnet18",
        classes=CLASSES,
        defect_class="def_front",
        preprocessing=Preprocessing(image_size=IMAGE_SIZE, mean=MEAN, std=STD),
        weights_source="random",
    )
    return registry.publish(manifest, model.state_dict())


def _verdicts(logits: np.ndarray, defect_index: int, threshold: float) -> list[bool]:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    return list(probs[:, defect_index] >= threshold)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- in-process -----------------------------------------------------------------------------------
class InProcess:
    """JPEG bytes -> verdicts in this process: decode + preprocess (common.images), backend, softmax."""

    def __init__(self, backend, images: list[bytes]) -> None:  # noqa: ANN001
        self.backend = backend
        self.images = images
        self.pipeline(images[:BATCH])  # warm-up
        self.pipeline(images[:1])

    def pipeline(self, chunk: list[bytes]) -> list[bool]:
        pixels = [decode_image(b) for b in chunk]
        x = preprocess_batch(pixels, IMAGE_SIZE, MEAN, STD)
        return _verdicts(self.backend.infer(x), 0, 0.5)

    def single(self, image: bytes) -> tuple[float, float, float]:
        """One image through the pipeline at batch 1: (total, decode + preprocess, inference) ms."""
        start = time.perf_counter()
        x = preprocess_batch([decode_image(image)], IMAGE_SIZE, MEAN, STD)
        decoded = time.perf_counter()
        logits = self.backend.infer(x)
        inferred = time.perf_counter()
        _verdicts(logits, 0, 0.5)
        end = time.perf_counter()
        return (end - start) * 1000, (decoded - start) * 1000, (inferred - decoded) * 1000

    def throughput(self, seconds: float, batch: int = BATCH) -> float:
        done, i = 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            chunk = [self.images[(i + k) % len(self.images)] for k in range(batch)]
            i += batch
            done += len(self.pipeline(chunk))
        return done / (time.perf_counter() - start)

    def parts(self, seconds: float) -> dict[str, float]:
        """Model-only throughput at batch 1 and 32, and decode + preprocess time per image."""
        out = {}
        x32 = preprocess_batch([decode_image(b) for b in self.images[:BATCH]], IMAGE_SIZE, MEAN, STD)
        for batch in (1, BATCH):
            x = x32[:batch]
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                self.backend.infer(x)
                n += batch
            out[f"model_only_b{batch}_img_s"] = n / (time.perf_counter() - start)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            preprocess_batch([decode_image(self.images[n % len(self.images)])], IMAGE_SIZE, MEAN, STD)
            n += 1
        out["decode_preprocess_ms"] = (time.perf_counter() - start) * 1000 / n
        return out


# -- served ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served_process(env: dict[str, str], port: int, module: str = "services.classifier",
                   service: str = "zdm.v1.Classifier") -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python -m <module>`` until it reports SERVING for ``service`` (health stays open with auth on);
    yields its address and process; stops it with SIGTERM afterwards."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=root, env={**os.environ, **env})
    target = f"127.0.0.1:{port}"
    try:
        channel = grpc.insecure_channel(target)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} did not become SERVING")
            time.sleep(0.2)
        channel.close()
        yield target, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def concurrent_throughput(call: Callable[[int, int], object], clients: int, seconds: float) -> float:
    """Calls per second with ``clients`` threads calling back to back: thread k makes calls ``call(k, i)`` for
    i = k, k + clients, ...; counted over ``seconds`` after a short ramp-up. Any failed call fails the phase."""
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
    time.sleep(min(1.0, seconds / 4))  # ramp-up
    before, t0 = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - before, time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(60)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed: {errors[0]}")
    return done / elapsed


def classifier_env(url: str, prefix: str, work: Path, port: int, backend: str) -> dict[str, str]:
    """The environment of a ``python -m services.classifier`` serving ``work``'s registry on ``port``."""
    return {
        "REDIS_URL": url,
        "ZDM_KEY_PREFIX": prefix,
        "ZDM_REGISTRY": str(work / "registry"),
        "ZDM_CACHE_DIR": str(work / "cache"),
        "ZDM_LOG_LEVEL": "WARNING",
        "ZDM_CLASSIFIER_PORT": str(port),
        "ZDM_CLASSIFIER_BACKEND": backend,
    }


def clean_up(url: str, prefix: str, embedded: EmbeddedRedis | None, scratch: Path | None) -> None:
    """Delete the run's Redis keys, stop the embedded Redis if one was started, remove the scratch folder if any."""
    delete_prefix(url, prefix)
    if embedded is not None:
        embedded.stop()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[str]:
    """Run ``python -m services.classifier`` until it reports SERVING; stop it with SIGTERM afterwards."""
    with served_process(env, port) as (target, _):
        yield target


class Served:
    """Clients of the served classifier: ``clients`` channels, each used by one thread at a time."""

    def __init__(self, target: str, images: list[bytes], clients: int) -> None:
        self.requests = [classifier_pb2.ClassifyRequest(image=common_pb2.Image(data=b)) for b in images]
        self.channels = [grpc.insecure_channel(target) for _ in range(clients)]
        self.stubs = [classifier_pb2_grpc.ClassifierStub(c) for c in self.channels]
        for k, stub in enumerate(self.stubs):
            stub.Classify(self.requests[k], timeout=60)  # connect and warm
        self.backend = ""

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def throughput(self, seconds: float) -> float:
        """Verdicts per second with every client sending one image at a time, back to back."""
        return concurrent_throughput(
            lambda k, i: self.stubs[k].Classify(self.requests[i % len(self.requests)], timeout=30), len(self.stubs), seconds
        )

    def classify(self, k: int, i: int) -> classifier_pb2.Verdict:
        """One call on client k's channel with image i."""
        verdict = self.stubs[k].Classify(self.requests[i % len(self.requests)], timeout=30)
        self.backend = verdict.backend
        return verdict


def alternating_latencies(
    inproc: InProcess, served: Served, seconds: float, block: int = LATENCY_BLOCK
) -> tuple[list[tuple[float, float, float]], list[float], list[tuple[float, float, float]]]:
    """One image at a time, alternating ``block`` in-process calls (batch 1) with ``block`` served calls
    (one client), so that load from other processes falls on both alike. Returns the in-process timings,
    the served client-side milliseconds and the served verdicts' server-side timings; timings are
    (total, decode + preprocess, inference) ms."""
    inproc_ms: list[tuple[float, float, float]] = []
    client_ms: list[float] = []
    server_ms: list[tuple[float, float, float]] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or len(inproc_ms) < 2 * block:
        for k in range(block):
            inproc_ms.append(inproc.single(inproc.images[(i + k) % len(inproc.images)]))
        for k in range(block):
            start = time.perf_counter()
            verdict = served.classify(0, i + k)
            client_ms.append((time.perf_counter() - start) * 1000)
            t = verdict.timing
            server_ms.append((t.total_ms, t.decode_ms, t.inference_ms))
        i += block
    return inproc_ms, client_ms, server_ms


def cpu_pressure() -> float | None:
    """Linux PSI: share of the last 10 s in which some runnable task waited for a CPU (None if unknown)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(item.split("=") for item in first.split()[1:])
    return float(fields["avg10"])


def wait_for_quiet(limit: float, timeout: float) -> float | None:
    """On a shared machine: wait (up to timeout) until other processes leave the CPUs mostly idle."""
    end = time.monotonic() + timeout
    pressure = cpu_pressure()
    while limit > 0 and pressure is not None and pressure > limit and time.monotonic() < end:
        time.sleep(1.0)
        pressure = cpu_pressure()
    return pressure


def _redis_url() -> tuple[str, EmbeddedRedis | None]:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        connect(url).close()
        return url, None
    except redis.RedisError:
        embedded = EmbeddedRedis()
        return embedded.start(), embedded


def delete_prefix(url: str, prefix: str) -> None:
    """Remove a bench run's keys (``<prefix>:*``) from the shared Redis."""
    client = connect(url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each figure counts")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--inference-threads", type=int, default=0, help="backend threads (in-process and served); 0 = the runtime default"
    )
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--server-threads", type=int, default=16, help="gRPC worker threads of the server")
    parser.add_argument(
        "--quiet-pressure",
        type=float,
        default=0.0,
        help="before each round wait (up to --quiet-timeout s) until CPU pressure (PSI avg10, %%) is below this; 0 = off",
    )
    parser.add_argument("--quiet-timeout", type=float, default=300.0)
    parser.add_argument("--work", type=Path, default=None, help="work folder (reused: the converted model is cached)")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    images, source = load_jpegs(args.images)
    work = args.work or Path(tempfile.mkdtemp(prefix="zdm-bench-"))
    registry = Registry(work / "registry")
    manifest = registry.newest() or publish_model(registry)
    url, embedded = _redis_url()
    prefix = f"zdmbench:{os.getpid()}"
    common = CommonSettings(redis_url=url, key_prefix=prefix, registry=work / "registry", cache_dir=work / "cache")
    settings = ClassifierSettings(common=common, backend=args.backend, inference_threads=args.inference_threads)
    print(f"images: {source}; model resnet18/224, backend {args.backend}; {os.cpu_count()} CPUs", flush=True)

    # In-process: the service's own backend factory (same conversion, cached) with the runtime's default threads.
    inproc = InProcess(backend_factory(registry, settings)(manifest), images)
    report = inproc.backend.verification  # how the factory chose the backend (services.classifier.verification)
    results: dict[str, object] = {
        "backend": inproc.backend.name,
        "verified_on": report.method if report is not None else "none",
        "verification_images": report.images if report is not None else 0,
        "rejected_backends": [f"{o.backend}: {o.reason}" for o in report.rejected] if report is not None else [],
        "images": source,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
    }
    results.update(inproc.parts(args.seconds / 2))

    port = _free_port()
    env = {
        **classifier_env(url, prefix, work, port, args.backend),
        "ZDM_CLASSIFIER_INFERENCE_THREADS": str(args.inference_threads),
        "ZDM_CLASSIFIER_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms),
        "ZDM_CLASSIFIER_MAX_WORKERS": str(args.server_threads),
    }
    rounds: dict[str, list[float]] = {k: [] for k in ("inproc", "served", "inproc_p50", "served_p50")}
    inproc_parts: list[tuple[float, float, float]] = []
    served_lat: list[float] = []
    server_lat: list[tuple[float, float, float]] = []
    pressures: list[float | None] = []
    try:
        with serving(env, port) as target:
            served = Served(target, images, CLIENTS)
            try:
                # Alternate the phases so that load from other processes hits both sides alike.
                for r in range(args.rounds):
                    pressures.append(wait_for_quiet(args.quiet_pressure, args.quiet_timeout))
                    rounds["inproc"].append(inproc.throughput(args.seconds))
                    rounds["served"].append(served.throughput(args.seconds))
                    lat, client_ms, server_ms = alternating_latencies(inproc, served, args.seconds)
                    rounds["inproc_p50"].append(statistics.median(t[0] for t in lat))
                    rounds["served_p50"].append(statistics.median(client_ms))
                    inproc_parts += lat
                    served_lat += client_ms
                    server_lat += server_ms
                    last = {k: v[-1] for k, v in rounds.items()}
                    print(
                        f"round {r + 1}: in-process {last['inproc']:.1f} img/s, served {last['served']:.1f} img/s;"
                        f" p50 in-process b1 {last['inproc_p50']:.2f} ms, served {last['served_p50']:.2f} ms",
                        flush=True,
                    )
            finally:
                served.close()
    finally:
        clean_up(url, prefix, embedded, work if args.work is None else None)

    inproc_lat = [t[0] for t in inproc_parts]
    # The same single-client calls against a bare Python gRPC server that only waits the in-process time.
    echo = EchoFloor(_free_port())
    try:
        echo_overheads = echo.overheads_ms(images, statistics.median(inproc_lat), calls=300)
    finally:
        echo.close()

    best = {
        "inprocess_img_s": max(rounds["inproc"]),
        "served_img_s": max(rounds["served"]),
        "inprocess_b1_p50_ms": statistics.median(inproc_lat),  # pooled over the latency blocks of all rounds
        "served_p50_ms": statistics.median(served_lat),
    }
    results.update(best)
    results.update(
        {
            "served_backend": served.backend,
            "inprocess_b1_p99_ms": _pct(inproc_lat, 99),
            "served_p99_ms": _pct(served_lat, 99),
            "served_server_side_p50_ms": statistics.median(t[0] for t in server_lat),
            "inprocess_b1_decode_p50_ms": statistics.median(t[1] for t in inproc_parts),
            "served_decode_p50_ms": statistics.median(t[1] for t in server_lat),
            "inprocess_b1_inference_p50_ms": statistics.median(t[2] for t in inproc_parts),
            "served_inference_p50_ms": statistics.median(t[2] for t in server_lat),
            "served_over_inprocess": best["served_img_s"] / best["inprocess_img_s"],
            "p50_minus_inprocess_b1_ms": best["served_p50_ms"] - best["inprocess_b1_p50_ms"],
            "median_matched_difference_ms": statistics.median(c - i for c, i in zip(served_lat, inproc_lat, strict=True)),
            "served_outside_server_p50_ms": statistics.median(c - s[0] for c, s in zip(served_lat, server_lat, strict=True)),
            "grpc_echo_overhead_p50_ms": statistics.median(echo_overheads),
            "per_round_served_over_inprocess": [s / i for s, i in zip(rounds["served"], rounds["inproc"], strict=True)],
            "rounds": args.rounds,
            "loadavg_1m_at_end": os.getloadavg()[0],
            "cpu_pressure_at_round_start": pressures,
            "seconds_per_phase": args.seconds,
        }
    )
    results["targets_met"] = bool(
        results["served_over_inprocess"] >= 0.8 and results["p50_minus_inprocess_b1_ms"] <= 1.0  # type: ignore[operator]
    )
    for key, value in results.items():
        print(f"  {key:>32}: {value:.2f}" if isinstance(value, float) else f"  {key:>32}: {value}")
    rounded = {
        k: round(v, 3)
        if isinstance(v, float)
        else [round(x, 3) if isinstance(x, float) else x for x in v]
        if isinstance(v, list)
        else v
        for k, v in results.items()
    }
    print(json.dumps(rounded), flush=True)


if __name__ == "__main__":
    main()
