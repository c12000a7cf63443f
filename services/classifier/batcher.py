"""Dynamic batching: callers submit preprocessed images, one worker thread stacks and infers them.

One :class:`Batcher` serves one loaded model version. Callers (gRPC pool threads) decode and
preprocess an image themselves, then :meth:`Batcher.submit` it and wait on the returned future; the
worker only stacks tensors and runs the backend, so the expensive per-image work stays parallel.

A batch closes when it holds ``max_batch_size`` items or when ``max_queue_delay_ms`` has passed since
its first item was queued, whichever comes first. Callers may announce an item before they start
decoding it (:meth:`Batcher.reserve`); the worker waits for more items only while such announced
items are on their way, so a lone client never pays the queue delay.

When nothing is queued, computing or announced, :meth:`Batcher.submit` computes the item in the
caller's thread instead (a batch of one): a lone client then pays no thread hand-off either, which on
a loaded machine costs more than the computation's overhead. Only one inference runs at a time.

Before compute, items whose deadline has passed fail with :class:`DeadlineExceeded` and items whose
call is no longer active fail with :class:`Cancelled`; neither reaches the backend.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from common.errors import Cancelled, DeadlineExceeded, Unavailable
from services.classifier.metrics import ClassifierMetrics

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """What one item gets back: its logits row and how its time was spent."""

    logits: np.ndarray  # (C,) float32
    queue_ms: float  # from submit to the start of its batch's inference
    inference_ms: float  # the whole batch's inference time
    batch_size: int


class _Item:
    __slots__ = ("tensor", "future", "deadline", "is_active", "enqueued")

    def __init__(self, tensor: np.ndarray, deadline: float | None, is_active: Callable[[], bool] | None) -> None:
        self.tensor = tensor
        self.future: Future[BatchOutput] = Future()
        self.deadline = deadline
        self.is_active = is_active
        self.enqueued = time.perf_counter()


class Reservation:
    """An announced item; :meth:`Batcher.submit` consumes it, leaving the ``with`` block releases it."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False


class Batcher:
    """A queue for one model version, drained by one worker thread.

    Args:
        infer: the backend's thread-safe ``N x 3 x S x S`` float32 -> ``N x C`` logits function.
        max_batch_size: most items per inference call.
        max_queue_delay_ms: longest an item waits for companions once it heads the queue.
        label: names the thread and the metrics series (e.g. "casting:3").
        metrics: where batch sizes, queue depth and drops are counted; optional.
    """

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        label: str = "model",
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        self._infer = infer
        self._max = max_batch_size
        self._delay = max_queue_delay_ms / 1000.0
        self._label = label
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._arriving = 0
        self._closing = False
        self._worker_active = False  # the worker holds a batch (collecting or computing)
        self._inline_active = False  # a caller computes its own item
        self._buffer: np.ndarray | None = None
        self.batches = 0  # inference calls made (tests and benchmarks read it)
        self._depth = metrics.queue_depth.labels(label) if metrics else None
        self._sizes = metrics.batch_size.labels(label) if metrics else None
        self._dropped = {r: metrics.dropped.labels(r) for r in ("deadline", "cancelled")} if metrics else None
        self._thread = threading.Thread(target=self._run, name=f"batcher-{label}", daemon=True)
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """Announce an item that is being prepared, so the worker waits for it (up to the delay)."""
        token = Reservation()
        with self._cond:
            self._arriving += 1
        try:
            yield token
        finally:
            if not token.used:
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify()

    def submit(
        self,
        tensor: np.ndarray,
        *,
        deadline: float | None = None,
        is_active: Callable[[], bool] | None = None,
        reservation: Reservation | None = None,
        inline: bool = True,
    ) -> Future[BatchOutput]:
        """Queue one preprocessed image (3 x S x S float32), or compute it at once when the batcher is idle.

        Args:
            deadline: ``time.perf_counter()`` value after which the item is dropped instead of computed.
            is_active: called just before compute; False drops the item (the caller went away).
            reservation: the token from :meth:`reserve` this item fulfils.
            inline: allow computing in the calling thread (the future is then done on return). Callers
                that pipeline (decode the next item while this one computes) pass False.

        Raises:
            Unavailable: the batcher is closed (its model version was unloaded).
        """
        item = _Item(tensor, deadline, is_active)
        with self._cond:
            if self._closing:
                raise Unavailable(f"model {self._label} is being unloaded; retry")
            if reservation is not None and not reservation.used:
                reservation.used = True
                self._arriving -= 1
            run_here = (
                inline and not self._queue and self._arriving <= 0 and not self._worker_active and not self._inline_active
            )
            if run_here:
                self._inline_active = True
            else:
                self._queue.append(item)
                self._cond.notify()
        if run_here:
            self._compute_inline(item)
        elif self._depth is not None:
            self._depth.inc()
        return item.future

    def submit_many(
        self, tensors: list[np.ndarray], *, deadline: float | None = None, is_active: Callable[[], bool] | None = None
    ) -> list[Future[BatchOutput]]:
        """Queue several images at once (the worker sees them together, so they share batches)."""
        items = [_Item(t, deadline, is_active) for t in tensors]
        with self._cond:
            if self._closing:
                raise Unavailable(f"model {self._label} is being unloaded; retry")
            self._queue.extend(items)
            self._cond.notify()
        if self._depth is not None:
            self._depth.inc(len(items))
        return [item.future for item in items]

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the queued items, then stop the worker. Later submits raise Unavailable."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- worker side ------------------------------------------------------------------------------
    def _compute_inline(self, item: _Item) -> None:
        try:
            self._compute([item])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through its future
            log.exception("inference failed on %s", self._label)
            if not item.future.done():
                item.future.set_exception(exc)
        finally:
            with self._cond:
                self._inline_active = False
                self._cond.notify()

    def _collect(self) -> list[_Item] | None:
        """Block for the next batch; None when closed and drained. Returns with the worker active."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            self._worker_active = True
            batch = [self._queue.popleft()]
            close_at = batch[0].enqueued + self._delay
            while len(batch) < self._max:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                if self._arriving <= 0 or self._closing:
                    break
                remaining = close_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            while self._inline_active:  # one inference at a time
                self._cond.wait()
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            if self._depth is not None:
                self._depth.dec(len(batch))
            try:
                self._compute(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller, never lost
                log.exception("batch of %d failed on %s", len(batch), self._label)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                with self._cond:
                    self._worker_active = False

    def _live(self, batch: list[_Item]) -> list[_Item]:
        """Fail the items that must not be computed; return the rest."""
        now = time.perf_counter()
        live = []
        for item in batch:
            if item.deadline is not None and now >= item.deadline:
                late_ms = (now - item.deadline) * 1000
                item.future.set_exception(DeadlineExceeded(f"deadline passed {late_ms:.1f} ms before compute"))
                if self._dropped is not None:
                    self._dropped["deadline"].inc()
            elif item.is_active is not None and not item.is_active():
                item.future.set_exception(Cancelled("call cancelled before compute"))
                if self._dropped is not None:
                    self._dropped["cancelled"].inc()
            else:
                live.append(item)
        return live

    def _stack(self, items: list[_Item]) -> np.ndarray:
        """Copy the tensors into a reused buffer (the worker is the buffer's only user); a lone item
        is passed as a view, without a copy (an inline caller must not touch the worker's buffer)."""
        if len(items) == 1:
            return items[0].tensor[None]
        shape = items[0].tensor.shape
        if self._buffer is None or self._buffer.shape[1:] != shape:
            self._buffer = np.empty((self._max, *shape), dtype=np.float32)
        out = self._buffer[: len(items)]
        for i, item in enumerate(items):
            out[i] = item.tensor  # raises on a shape mismatch: that batch fails, not the worker
        return out

    def _compute(self, batch: list[_Item]) -> None:
        live = self._live(batch)
        if not live:
            return
        x = self._stack(live)
        start = time.perf_counter()
        logits = self._infer(x)
        end = time.perf_counter()
        self.batches += 1
        if logits.shape[0] != len(live):
            raise RuntimeError(f"backend returned {logits.shape[0]} rows for a batch of {len(live)}")
        inference_ms = (end - start) * 1000
        n = len(live)
        if self._sizes is not None:
            self._sizes.observe(n)
        for i, item in enumerate(live):
            item.future.set_result(BatchOutput(logits[i], (start - item.enqueued) * 1000, inference_ms, n))
