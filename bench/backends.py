"""Micro-benchmark of the classifier's inference backends (model only, then with concurrent decoding).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.backends [--model resnet18] [--size 224] [--seconds 2]
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.backends --registry DIR --name MODEL [--dataset DIR]

With ``--registry``: throughput at zero verdict flips. For a published version with a verification
set, each backend configuration (torch fp32, OpenVINO f32 / bf16 / ACCURACY mode / THROUGHPUT, ONNX
Runtime, OpenVINO INT8 calibrated with NNCF on training images, with and without the first and last
layers kept in f32) is run on the set: verdict flips vs torch fp32, max |dp|, whether the classifier's
verification would accept it, and img/s at batch 1 and 32; with ``--dataset`` also the flips on the
test split's images. The last lines name the fastest configuration that passes.

Part 1 times ``Backend.infer`` alone at batch 1 and 32 for torch fp32, OpenVINO bf16 / f32 (1 and all
inference threads) and ONNX Runtime. Part 2 runs a small pipeline like the service's: decode threads
turn 300x300 JPEGs into normalised tensors while one inference thread consumes batches, to show how
many threads the backend should get when decoding shares the cores. Numbers are images per second,
best of ``--repeats`` windows (the box may be shared; the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import timm
import torch

from services.classifier.backends import Backend, BackendOptions, create_backend

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MEAN, STD = 0.5643, 0.2386


def throughput(fn: Callable[[], int], seconds: float, repeats: int) -> tuple[float, float]:
    """Best and median items/s of ``repeats`` windows of about ``seconds`` each (after a warm-up)."""
    for _ in range(3):
        fn()
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            done += fn()
        rates.append(done / elapsed)
    return max(rates), float(np.median(rates))


def model_only(
    backend: Backend, batch: int, size: int, seconds: float, repeats: int, callers: int = 1
) -> tuple[float, float]:
    """Images/s of ``infer`` on one batch, from ``callers`` threads at once."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    return infer_rate(backend, x, seconds, repeats, callers, batches_per_caller=4)


def infer_rate(
    backend: Backend, x: np.ndarray, seconds: float, repeats: int, callers: int, batches_per_caller: int
) -> tuple[float, float]:
    """Images/s of ``infer`` on batch ``x``: one caller back to back, or bursts in which each of ``callers``
    threads runs ``batches_per_caller`` batches (a burst ends when all are done)."""
    batch = len(x)
    if callers == 1:

        def step() -> int:
            backend.infer(x)
            return batch

        return throughput(step, seconds, repeats)

    def burst() -> int:
        threads = [threading.Thread(target=lambda: [backend.infer(x) for _ in range(batches_per_caller)])
                   for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return batches_per_caller * callers * batch

    return throughput(burst, seconds, repeats)


def make_jpegs(n: int, side: int = 300) -> list[bytes]:
    """Grey casting-like pictures: a lit disc on a textured background, a few with a dark spot."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    out = []
    for i in range(n):
        img = 90 + 20 * rng.standard_normal((side, side))
        img[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side * 0.4) ** 2] += 80
        if i % 3 == 0:
            cy, cx = rng.integers(60, side - 60, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] -= 70
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.tobytes())
    return out


def preprocess(jpeg: bytes, size: int) -> np.ndarray:
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    x = (grey.astype(np.float32) * (1 / 255) - MEAN) / STD
    return np.broadcast_to(x, (3, size, size))


def pipeline(backend: Backend, jpegs: list[bytes], size: int, batch: int, decoders: int, seconds: float) -> float:
    """End-to-end images/s: ``decoders`` threads decode into a queue, one thread infers batches."""
    q: queue.Queue[np.ndarray] = queue.Queue(maxsize=4 * batch)
    stop = threading.Event()

    def decode(k: int) -> None:
        i = k
        while not stop.is_set():
            item = preprocess(jpegs[i % len(jpegs)], size)
            i += decoders
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    break
                except queue.Full:
                    pass

    threads = [threading.Thread(target=decode, args=(k,), daemon=True) for k in range(decoders)]
    for t in threads:
        t.start()
    buf = np.empty((batch, 3, size, size), np.float32)
    done, start, warm = 0, 0.0, 2
    while True:
        for j in range(batch):
            buf[j] = q.get()
        backend.infer(buf)
        if warm:
            warm -= 1
            if not warm:
                start = time.perf_counter()
            continue
        done += batch
        if time.perf_counter() - start >= seconds:
            break
    rate = done / (time.perf_counter() - start)
    stop.set()
    for t in threads:
        t.join()
    return rate


def decode_only(jpegs: list[bytes], size: int, decoders: int, seconds: float) -> float:
    counts = [0] * decoders
    stop = threading.Event()

    def work(k: int) -> None:
        i = k
        while not stop.is_set():
            preprocess(jpegs[i % len(jpegs)], size)
            counts[k] += 1
            i += decoders

    threads = [threading.Thread(target=work, args=(k,)) for k in range(decoders)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", type=Path, help="a model registry: benchmark its version's verified backends")
    ap.add_argument("--name", help="model name in --registry")
    ap.add_argument("--version", type=int, default=0, help="0: the newest")
    ap.add_argument("--dataset", type=Path, help="ImageFolder root: INT8 calibration (train/) and test flips (test/)")
    ap.add_argument("--test-images", type=int, default=400, help="test images compared (0: none)")
    ap.add_argument("--calibration-images", type=int, default=200)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args()
    if args.registry is not None:
        from bench.verified_backends import run_verified

        run_verified(args)
        return
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as cache:
        run(args, Path(cache))


def run(args: argparse.Namespace, cache: Path) -> None:

    cv2.setNumThreads(1)  # decode parallelism comes from our threads, as in the service
    cores = os.cpu_count() or 1
    print(
        f"{args.model} @ {args.size}, {cores} cores, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    model = timm.create_model(args.model, pretrained=False, num_classes=2).eval()
    key = f"bench-{args.model}"
    nopin = {"ENABLE_CPU_PINNING": False}
    configs: list[tuple[str, str, BackendOptions, int]] = [
        ("torch fp32", "torch", BackendOptions(), 1),
        (f"openvino bf16 x{cores}", "openvino", BackendOptions(precision="bf16"), 1),
        ("openvino bf16 x1", "openvino", BackendOptions(precision="bf16", num_threads=1), 1),
        (f"openvino bf16 x{cores} no pinning", "openvino", BackendOptions(openvino_config=nopin), 1),
        (
            f"openvino bf16 THROUGHPUT, {cores} callers",
            "openvino",
            BackendOptions(precision="bf16", performance_hint="THROUGHPUT"),
            cores,
        ),
        (f"openvino f32 x{cores}", "openvino", BackendOptions(precision="f32"), 1),
        (f"onnxruntime x{cores}", "onnxruntime", BackendOptions(), 1),
        (f"onnxruntime x{cores} spinning", "onnxruntime", BackendOptions(ort_allow_spinning=True), 1),
        ("onnxruntime x1", "onnxruntime", BackendOptions(num_threads=1), 1),
    ]
    backends: dict[str, Backend] = {}
    print(f"\n{'model only (img/s best / median)':40s} {'batch 1':>16s} {'batch 32':>16s}")
    for label, kind, options, callers in configs:
        try:
            backend = create_backend(kind, model, args.size, cache, key, options=options)
        except Exception as e:  # a benchmark reports and moves on
            print(f"{label:40s} failed: {e}")
            continue
        backends[label] = backend
        cells = []
        for batch in (1, 32):
            best, med = model_only(backend, batch, args.size, args.seconds, args.repeats, callers)
            cells.append(f"{best:7.1f} / {med:6.1f}")
        print(f"{label:40s} {cells[0]:>16s} {cells[1]:>16s}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")

    if args.skip_pipeline:
        return
    jpegs = make_jpegs(64)
    print(f"\ndecode + preprocess only (300x300 JPEG -> {args.size}):")
    for d in (1, cores):
        print(f"  {d} decode threads: {decode_only(jpegs, args.size, d, args.seconds):7.1f} img/s", flush=True)
    print("\npipeline (decode threads + one inference thread), img/s end to end:")
    for label in (f"openvino bf16 x{cores}", f"openvino bf16 x{cores} no pinning", "openvino bf16 x1"):
        if label not in backends:
            continue
        for batch in (1, 32):
            for d in (1, cores):
                rate = pipeline(backends[label], jpegs, args.size, batch, d, args.seconds * 2)
                print(f"  {label:32s} batch {batch:2d}, {d} decode threads: {rate:7.1f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
