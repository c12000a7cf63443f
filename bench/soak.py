"""Soak: classifier, explainer and trainer as real processes on loopback with authentication on, under a
mixed open-loop load at ~80 % of the capacity measured in the same run; errors, p99 and RSS growth.

One run: a tiny model (test_resnet, 64 px, random weights) is published into a temp registry, a tokens
file with one ``scheduler`` token (may Classify, Explain and list jobs; only its SHA-256 on disk) is
written, and ``python -m services.classifier`` / ``services.explainer`` / ``services.trainer`` start
with ``ZDM_AUTH_TOKENS_FILE`` set (a call without the token must get UNAUTHENTICATED, or the run stops).
The explainer's per-token rate limit is lifted (``ZDM_RATE_LIMITS={}``): the soak is about the service
holding up, not about the limiter refusing.

1. capacity: ``--capacity-seconds`` of closed-loop load, all kinds at once (Classify and Explain
   clients calling back to back, ClassifyStream clients sending 16 items per stream and waiting for the
   verdicts): completions per second of each kind;
2. soak: ``--minutes`` of open-loop load at ``--load`` (0.8) of each kind's capacity: Classify and
   Explain as async unary calls on a fixed schedule, ClassifyStream items queued on a schedule onto
   streams of ``STREAM_ITEMS`` items each (a new stream per batch, so open and close are soaked too),
   plus ``ListJobs`` on the trainer at 2 / s. At most ``MAX_IN_FLIGHT`` requests of a kind are
   outstanding; a request due beyond that is not sent and counted as ``shed``. Latencies are measured
   from the scheduled send time (no coordinated omission). Each service process's RSS (psutil, else
   /proc/PID/status VmRSS) is sampled after the warm-up (a fifth of the soak, at least 10 s) and at
   the end.

Progress lines every ``--progress-seconds``; the LAST line is one JSON object: per service ``errors``,
``p99_ms``, ``rss_growth_pct`` (targets: 0 errors, RSS growth < 5 %), per call kind the counts and
latencies, the measured capacity and the totals.

Usage: ``python bench/soak.py [--minutes 10] [--load 0.8]``. Needs a Redis (as bench/classifier.py:
``REDIS_URL``, else 127.0.0.1:6379, else an embedded one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402

from bench.classifier import _free_port, _pct, _redis_url, delete_prefix, served_process  # noqa: E402
from bench.idle_streams import publish_tiny  # noqa: E402
from client.sdk import ClassifierClient, Credentials, ExplainerClient, TrainerClient  # noqa: E402
from common.auth import token_sha256  # noqa: E402
from common.datasets.synthetic import render_part  # noqa: E402
from common.registry import Registry  # noqa: E402
from protos.zdm.v1 import classifier_pb2, common_pb2, explainer_pb2, trainer_pb2  # noqa: E402

MODEL = "soak-tiny"
CALL_TIMEOUT = 30.0
MAX_IN_FLIGHT = 64
STREAM_ITEMS = 50
CAPACITY_CLIENTS = {"classify": 3, "classify_stream": 2, "explain": 2}
TRAINER_RATE = 2.0
TARGETS = {"errors": 0, "rss_growth_pct_below": 5.0}


def rss_bytes(pid: int) -> int:
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


class Stats:
    """Outcomes of one call kind: latencies (ms) of answered calls, errors by status code, shed requests."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.sent = 0
        self.shed = 0
        self.in_flight = 0

    def start(self) -> bool:
        with self.lock:
            if self.in_flight >= MAX_IN_FLIGHT:
                self.shed += 1
                return False
            self.in_flight += 1
            self.sent += 1
            return True

    def done(self, started: float, error: grpc.StatusCode | None = None) -> None:
        with self.lock:
            self.in_flight -= 1
            if error is None:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.codes[error.name] += 1

    @property
    def errors(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> dict[str, object]:
        with self.lock:
            lat = list(self.latencies)
            return {"sent": self.sent, "answered": len(lat), "errors": self.errors, "error_codes": dict(self.codes),
                    "shed": self.shed, "p50_ms": round(_pct(lat, 50), 2) if lat else None,
                    "p99_ms": round(_pct(lat, 99), 2) if lat else None}


def _code(exc: BaseException) -> grpc.StatusCode:
    return exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNKNOWN


class Load:
    """The three services' clients and the requests they send (images: synthetic 64 px parts)."""

    def __init__(self, targets: dict[str, str], token: str) -> None:
        creds = Credentials(token=token)
        self.classifier = ClassifierClient(targets["classifier"], creds)
        self.explainer = ExplainerClient(targets["explainer"], creds)
        self.trainer = TrainerClient(targets["trainer"], creds)
        rng = np.random.default_rng(0)
        images = [cv2.imencode(".png", render_part(rng, 64, ("pit",) if i % 2 else ())[0])[1].tobytes()
                  for i in range(8)]
        self.images = [common_pb2.Image(data=b) for b in images]
        self.count = 0

    def classify_request(self, i: int) -> classifier_pb2.ClassifyRequest:
        return classifier_pb2.ClassifyRequest(image=self.images[i % len(self.images)], request_id=f"r{i}")

    def explain_request(self, i: int) -> explainer_pb2.ExplainRequest:
        return explainer_pb2.ExplainRequest(image=self.images[i % len(self.images)])

    def unary(self, kind: str, i: int) -> grpc.Future:
        if kind == "classify":
            return self.classifier.stub.Classify.future(self.classify_request(i), timeout=CALL_TIMEOUT)
        if kind == "explain":
            return self.explainer.stub.Explain.future(self.explain_request(i), timeout=CALL_TIMEOUT)
        return self.trainer.stub.ListJobs.future(trainer_pb2.ListJobsRequest(limit=10), timeout=CALL_TIMEOUT)

    def stream_batch(self, first: int, count: int) -> None:
        """One ClassifyStream of ``count`` items sent at once; raises on a failed or short stream."""
        verdicts = list(self.classifier.stub.ClassifyStream(
            (self.classify_request(first + k) for k in range(count)), timeout=CALL_TIMEOUT))
        if len(verdicts) != count:
            raise RuntimeError(f"stream answered {len(verdicts)} of {count}")

    def close(self) -> None:
        for client in (self.classifier, self.explainer, self.trainer):
            client.close()


def capacity(load: Load, seconds: float) -> dict[str, float]:
    """Completions per second of each kind, all kinds closed-loop at once."""
    counts: Counter[str] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(kind: str, k: int) -> None:
        i = k * 1_000_000
        while not stop.is_set():
            try:
                if kind == "classify_stream":
                    load.stream_batch(i, 16)
                    n = 16
                else:
                    load.unary(kind, i).result()
                    n = 1
            except Exception as exc:  # noqa: BLE001 - reported after the phase
                errors.append(exc)
                return
            with lock:
                counts[kind] += n
            i += n

    threads = [threading.Thread(target=client, args=(kind, k), daemon=True)
               for kind, n in CAPACITY_CLIENTS.items() for k in range(n)]
    for t in threads:
        t.start()
    time.sleep(min(2.0, seconds / 4))  # ramp-up
    with lock:
        before, t0 = Counter(counts), time.perf_counter()
    time.sleep(seconds)
    with lock:
        done, elapsed = counts - before, time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(CALL_TIMEOUT)
    if errors:
        raise RuntimeError(f"{len(errors)} capacity calls failed: {errors[0]}")
    return {kind: done[kind] / elapsed for kind in CAPACITY_CLIENTS}


def _paced(rate: float, stop: threading.Event):  # noqa: ANN202 - a generator of send indexes
    """Yields 0, 1, 2, ... at ``rate`` per second on a fixed schedule (open loop) until stop."""
    start, i = time.perf_counter(), 0
    while not stop.is_set():
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            stop.wait(wait)
            if stop.is_set():
                return
        yield i
        i += 1


def drive_unary(load: Load, kind: str, rate: float, stats: Stats, stop: threading.Event) -> None:
    for i in _paced(rate, stop):
        if not stats.start():
            continue
        started = time.perf_counter()
        try:
            future = load.unary(kind, i)
        except Exception as exc:  # noqa: BLE001 - counted
            stats.done(started, _code(exc))
            continue
        future.add_done_callback(
            lambda f, t=started: stats.done(t, None if f.exception() is None else _code(f.exception())))


def drive_stream(load: Load, rate: float, stats: Stats, stop: threading.Event) -> None:
    """Items due on the schedule go into a queue; stream threads each take STREAM_ITEMS of them per stream."""
    due: queue.Queue[tuple[int, float] | None] = queue.Queue()
    closed = threading.Event()

    def one_stream() -> None:
        sent: dict[str, float] = {}

        def items():
            for _ in range(STREAM_ITEMS):
                item = due.get()
                if item is None:
                    closed.set()
                    due.put(None)  # wake the other stream threads too
                    return
                i, started = item
                sent[f"r{i}"] = started
                yield load.classify_request(i)

        try:
            for verdict in load.classifier.stub.ClassifyStream(items(), timeout=10 * CALL_TIMEOUT):
                stats.done(sent.pop(verdict.request_id))
        except Exception as exc:  # noqa: BLE001 - every unanswered item counts
            for started in sent.values():
                stats.done(started, _code(exc))
            sent.clear()
        for started in sent.values():  # the stream ended without answering them
            stats.done(started, grpc.StatusCode.DATA_LOSS)

    def worker() -> None:
        while not closed.is_set():
            one_stream()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in workers:
        t.start()
    for i in _paced(rate, stop):
        if stats.start():
            due.put((i, time.perf_counter()))
    due.put(None)
    for t in workers:
        t.join(CALL_TIMEOUT)


def soak(load: Load, rates: dict[str, float], procs: dict[str, int], minutes: float,
         progress_seconds: float) -> tuple[dict[str, Stats], dict[str, list[tuple[float, int]]], float]:
    stats = {"classify": Stats("classifier"), "classify_stream": Stats("classifier"),
             "explain": Stats("explainer"), "list_jobs": Stats("trainer")}
    stop = threading.Event()
    drivers = [threading.Thread(target=drive_stream, args=(load, rates["classify_stream"], stats["classify_stream"], stop),
                                daemon=True)]
    drivers += [threading.Thread(target=drive_unary, args=(load, kind, rates[kind], stats[kind], stop), daemon=True)
                for kind in ("classify", "explain", "list_jobs")]
    seconds = minutes * 60
    warmup = max(10.0, seconds / 5)
    rss: dict[str, list[tuple[float, int]]] = {name: [] for name in procs}
    t0 = time.perf_counter()
    for t in drivers:
        t.start()
    next_progress, warm_taken = progress_seconds, False
    while (elapsed := time.perf_counter() - t0) < seconds:
        time.sleep(min(1.0, seconds - elapsed))
        elapsed = time.perf_counter() - t0
        if not warm_taken and elapsed >= warmup:
            for name, pid in procs.items():
                rss[name].append((elapsed, rss_bytes(pid)))
            warm_taken = True
        if elapsed >= next_progress:
            next_progress += progress_seconds
            parts = [f"{kind} {s.sent} sent {s.errors} err {s.shed} shed" for kind, s in stats.items()]
            mem = " ".join(f"{name} {rss_bytes(pid) / 2**20:.0f}" for name, pid in procs.items())
            print(f"[{elapsed:5.0f}s] {' | '.join(parts)} | RSS MiB {mem}", flush=True)
    stop.set()
    for t in drivers:
        t.join(2 * CALL_TIMEOUT)
    drain = time.perf_counter() + CALL_TIMEOUT
    while any(s.in_flight for s in stats.values()) and time.perf_counter() < drain:
        time.sleep(0.1)
    end = time.perf_counter() - t0
    for name, pid in procs.items():
        rss[name].append((end, rss_bytes(pid)))
    return stats, rss, end


def summarise(stats: dict[str, Stats], rss: dict[str, list[tuple[float, int]]]) -> dict[str, object]:
    services: dict[str, object] = {}
    for name, samples in rss.items():
        kinds = [s for s in stats.values() if s.service == name]
        latencies = [x for s in kinds for x in s.latencies]
        (_, warm), (_, last) = samples[0], samples[-1]
        services[name] = {
            "errors": sum(s.errors for s in kinds),
            "p99_ms": round(_pct(latencies, 99), 2) if latencies else None,
            "rss_growth_pct": round((last - warm) / warm * 100, 2),
            "rss_mib_after_warmup": round(warm / 2**20, 1),
            "rss_mib_end": round(last / 2**20, 1),
            "answered": len(latencies),
            "shed": sum(s.shed for s in kinds),
        }
    return services


def _unauthenticated_refused(target: str) -> bool:
    client = ClassifierClient(target, Credentials())
    try:
        client.classify(common_pb2.Image(data=b"x"), timeout=5)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to drive")
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--progress-seconds", type=float, default=10.0)
    args = parser.parse_args()

    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="zdm-soak-"))
    publish_tiny(Registry(work / "registry"), MODEL)
    token = secrets.token_urlsafe(32)
    tokens_file = work / "tokens.json"
    tokens_file.write_text(json.dumps({"tokens": [{"name": "soak", "roles": ["scheduler"],
                                                   "sha256": token_sha256(token)}]}))
    url, embedded = _redis_url()
    ports = {name: _free_port() for name in ("classifier", "explainer", "trainer")}
    prefix = f"zdmsoak:{os.getpid()}"
    env = {"REDIS_URL": url, "ZDM_KEY_PREFIX": prefix, "ZDM_REGISTRY": str(work / "registry"),
           "ZDM_CACHE_DIR": str(work / "cache"), "ZDM_LOG_LEVEL": "WARNING", "ZDM_DATA_ROOTS": str(work),
           "ZDM_AUTH_TOKENS_FILE": str(tokens_file), "ZDM_RATE_LIMITS": "{}",
           "ZDM_CLASSIFIER_HOST": "127.0.0.1", "ZDM_CLASSIFIER_PORT": str(ports["classifier"]),
           "ZDM_CLASSIFIER_BACKEND": "torch", "ZDM_CLASSIFIER_INFERENCE_THREADS": "1",
           "ZDM_EXPLAINER_HOST": "127.0.0.1", "ZDM_EXPLAINER_PORT": str(ports["explainer"]),
           "ZDM_TRAINER_HOST": "127.0.0.1", "ZDM_TRAINER_PORT": str(ports["trainer"]), "ZDM_TRAINER_WORKERS": "1",
           "ZDM_TRAINER_CHECKPOINT_DIR": str(work / "checkpoints"), "OMP_NUM_THREADS": "1"}
    result: dict[str, object] = {"minutes": args.minutes, "load": args.load, "cpus": os.cpu_count(),
                                 "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    try:
        with contextlib.ExitStack() as stack:
            targets, pids = {}, {}
            for name, service in (("classifier", "zdm.v1.Classifier"), ("explainer", "zdm.v1.Explainer"),
                                  ("trainer", "zdm.v1.Trainer")):
                target, proc = stack.enter_context(served_process(env, ports[name], f"services.{name}", service))
                targets[name], pids[name] = target, proc.pid
            if not _unauthenticated_refused(targets["classifier"]):
                raise RuntimeError("a call without a token was not refused: authentication is off")
            print("services up, authentication on (a call without a token: UNAUTHENTICATED)", flush=True)
            load = Load(targets, token)
            stack.callback(load.close)
            cap = capacity(load, args.capacity_seconds)
            rates = {kind: args.load * rps for kind, rps in cap.items()} | {"list_jobs": TRAINER_RATE}
            print("capacity (closed loop, all kinds at once): "
                  + ", ".join(f"{k} {v:.1f}/s" for k, v in cap.items())
                  + f"; soaking at {args.load:.0%} for {args.minutes:g} min", flush=True)
            stats, rss, elapsed = soak(load, rates, pids, args.minutes, args.progress_seconds)
        services = summarise(stats, rss)
        result.update({
            "capacity_rps": {k: round(v, 2) for k, v in cap.items()},
            "target_rps": {k: round(v, 2) for k, v in rates.items()},
            "soak_seconds": round(elapsed, 1),
            "calls": {kind: s.summary() for kind, s in stats.items()},
            "services": services,
            "total_sent": sum(s.sent for s in stats.values()),
            "total_errors": sum(s.errors for s in stats.values()),
            "total_shed": sum(s.shed for s in stats.values()),
            "max_rss_growth_pct": max(v["rss_growth_pct"] for v in services.values()),  # type: ignore[index]
            "targets": TARGETS,
        })
        result["meets_targets"] = (result["total_errors"] == 0
                                   and result["max_rss_growth_pct"] < TARGETS["rss_growth_pct_below"])
    finally:
        delete_prefix(url, prefix)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
