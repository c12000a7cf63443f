"""Dynamic batcher: size and delay bounds, reservations, deadlines, cancellation, errors, overhead."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

from common.errors import Cancelled, DeadlineExceeded, Unavailable
from services.classifier.batcher import Batcher
from services.classifier.metrics import ClassifierMetrics


class Recorder:
    """A fake backend: logits row i = [sum(x_i), batch size]; optionally waits on a gate."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(x.shape[0])
        sums = x.reshape(x.shape[0], -1).sum(axis=1)
        return np.stack([sums, np.full_like(sums, x.shape[0])], axis=1).astype(np.float32)


def item(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.float32)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_results_match_inputs_and_batches_respect_the_size_limit(recorder: Recorder) -> None:
    batcher = Batcher(recorder, max_batch_size=4, max_queue_delay_ms=50)
    try:
        recorder.gate.clear()
        first = batcher.submit(item(0), inline=False)
        assert recorder.entered.wait(5)  # the worker is busy with the first item
        futures = [batcher.submit(item(i)) for i in range(1, 11)]
        recorder.gate.set()
        results = [f.result(5) for f in [first, *futures]]
    finally:
        batcher.close()
    assert [r.logits[0] for r in results] == [12.0 * i for i in range(11)]
    assert recorder.sizes == [1, 4, 4, 2]
    assert all(r.batch_size == r.logits[1] for r in results)


def test_an_idle_batcher_computes_in_the_callers_thread_and_a_busy_one_queues() -> None:
    threads: list[int] = []
    gate = threading.Event()

    def infer(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        gate.wait(5)
        return np.zeros((x.shape[0], 2), np.float32)

    batcher = Batcher(infer, max_batch_size=8, max_queue_delay_ms=0)
    try:
        gate.set()
        assert batcher.submit(item(1)).done()  # computed before submit returned
        assert threads == [threading.get_ident()]
        batcher.submit(item(1), inline=False).result(5)
        assert threads[-1] != threading.get_ident()
        gate.clear()
        busy = threading.Thread(target=lambda: batcher.submit(item(2)))
        busy.start()  # computes inline in its own thread and blocks on the gate
        while len(threads) < 3:
            time.sleep(0.01)
        queued = batcher.submit(item(3))  # someone is computing: this one waits for the worker
        assert not queued.done()
        gate.set()
        busy.join(5)
        assert queued.result(5).batch_size == 1
        assert threads[-1] not in (threading.get_ident(), threads[2])
    finally:
        gate.set()
        batcher.close()


def test_a_lone_item_does_not_wait_for_the_delay(recorder: Recorder) -> None:
    batcher = Batcher(recorder, max_batch_size=8, max_queue_delay_ms=1000)
    try:
        start = time.perf_counter()
        with batcher.reserve() as token:
            future = batcher.submit(item(1), reservation=token)
        future.result(5)
        assert time.perf_counter() - start < 0.5
    finally:
        batcher.close()


def test_reserved_items_are_waited_for_within_the_delay(recorder: Recorder) -> None:
    batcher = Batcher(recorder, max_batch_size=8, max_queue_delay_ms=2000)
    try:
        with batcher.reserve() as late:
            with batcher.reserve() as early:
                f1 = batcher.submit(item(1), reservation=early)
            time.sleep(0.1)
            f2 = batcher.submit(item(2), reservation=late)
        assert f1.result(5).batch_size == 2 and f2.result(5).batch_size == 2
    finally:
        batcher.close()
    assert recorder.sizes == [2]


def test_a_reservation_never_fulfilled_delays_by_at_most_the_queue_delay(recorder: Recorder) -> None:
    batcher = Batcher(recorder, max_batch_size=8, max_queue_delay_ms=100)
    try:
        with batcher.reserve():
            start = time.perf_counter()
            out = batcher.submit(item(1)).result(5)
            waited = time.perf_counter() - start
    finally:
        batcher.close()
    assert out.batch_size == 1
    assert 0.09 <= waited < 1.0


def test_expired_and_cancelled_items_are_dropped_before_compute(recorder: Recorder) -> None:
    metrics = ClassifierMetrics()
    batcher = Batcher(recorder, max_batch_size=8, max_queue_delay_ms=0, label="m:1", metrics=metrics)
    try:
        recorder.gate.clear()
        blocker = batcher.submit(item(0), inline=False)
        assert recorder.entered.wait(5)
        late = batcher.submit(item(1), deadline=time.perf_counter() + 0.01)
        gone = batcher.submit(item(2), is_active=lambda: False)
        fine = batcher.submit(item(3), deadline=time.perf_counter() + 60, is_active=lambda: True)
        time.sleep(0.05)
        recorder.gate.set()
        blocker.result(5)
        with pytest.raises(DeadlineExceeded):
            late.result(5)
        with pytest.raises(Cancelled):
            gone.result(5)
        assert fine.result(5).batch_size == 1
    finally:
        batcher.close()
    assert recorder.sizes == [1, 1]
    assert metrics.dropped.labels("deadline")._value.get() == 1
    assert metrics.dropped.labels("cancelled")._value.get() == 1
    assert metrics.queue_depth.labels("m:1")._value.get() == 0


def test_a_failing_backend_fails_its_batch_and_the_worker_survives() -> None:
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.zeros((x.shape[0], 2), np.float32)

    batcher = Batcher(flaky, max_batch_size=4, max_queue_delay_ms=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(item(1)).result(5)
        assert batcher.submit(item(1)).result(5).logits.shape == (2,)
    finally:
        batcher.close()


def test_close_drains_the_queue_then_rejects(recorder: Recorder) -> None:
    batcher = Batcher(recorder, max_batch_size=2, max_queue_delay_ms=0)
    recorder.gate.clear()
    futures = [batcher.submit(item(i), inline=False) for i in range(5)]
    assert recorder.entered.wait(5)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Unavailable):
        batcher.submit(item(9))
    recorder.gate.set()
    closer.join(5)
    assert [f.result(0).logits[0] for f in futures] == [12.0 * i for i in range(5)]


def test_overhead_per_item_is_small() -> None:
    """Round trip through the queue and the worker vs calling the backend directly (no-op backend)."""

    def noop(x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0], 2), np.float32)

    x = np.zeros((3, 64, 64), np.float32)
    batcher = Batcher(noop, max_batch_size=32, max_queue_delay_ms=2)
    try:
        samples = []
        for _ in range(300):
            start = time.perf_counter()
            with batcher.reserve() as token:
                batcher.submit(x, reservation=token, deadline=start + 5, is_active=lambda: True).result(5)
            samples.append(time.perf_counter() - start)
        direct = []
        for _ in range(300):
            start = time.perf_counter()
            noop(x[None])
            direct.append(time.perf_counter() - start)
    finally:
        batcher.close()
    overhead_ms = (statistics.median(samples) - statistics.median(direct)) * 1000
    print(f"batcher overhead per item: {overhead_ms:.3f} ms (median)")
    assert overhead_ms < 1.0
