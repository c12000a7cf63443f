"""One rank of a data-parallel job: ``training.fit`` with DDP, reduced metrics and rank-0-only side effects.

``rank_main`` is the entry point of a rank process started by ``services.trainer.distributed``. It
joins the job's process group, runs ``fit`` with :class:`DataParallel` and reports to the supervisor
over a queue: rank 0's hook calls (start, progress, epoch, checkpoint), the result, a stop, an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common import log as log_context
from common.errors import ZdmError
from common.log import setup_logging
from common.metrics import classification_metrics
from common.models.freeze import FreezeReport, train_mode
from common.verification import VERIFICATION_FILE
from services.trainer.data import BatchSource, PreparedData
from services.trainer.optim import LrSchedule
from services.trainer.runtime import Runtime
from services.trainer.shards import shard_source
from services.trainer.spec import JobConfig
from services.trainer.training import (
    BatchProgress,
    EpochRunner,
    FitHooks,
    FitOptions,
    FitResult,
    Parallelism,
    fit,
)

log = logging.getLogger(__name__)

RESULT_WEIGHTS = "model.safetensors"


class StopRequested(Exception):
    """Rank 0 saw the supervisor's stop flag; every rank raises this at the same batch."""


def metrics_from_confusion(confusion: np.ndarray, classes: list[str], loss: float | None) -> dict[str, Any]:
    """``classification_metrics`` of the predictions a (summed) confusion matrix counts."""
    n = len(classes)
    counts = np.asarray(confusion, dtype=np.int64).reshape(n * n)
    cells = np.arange(n * n)
    return classification_metrics(np.repeat(cells // n, counts), np.repeat(cells % n, counts), classes, loss=loss)


@dataclasses.dataclass
class RankGroup:
    """This process's place in the job's process group."""

    rank: int
    world: int
    device: torch.device
    backend: str
    control: Any  # gloo group of the per-batch control all-reduce (the default group when the backend is gloo)
    stop: Any = None  # rank 0: the supervisor's stop flag (a multiprocessing Event)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def control_step(self, count: int) -> tuple[int, bool]:
        """Every rank, before every batch: (images in the global batch, whether some rank's chunk is empty).

        One all-reduce of a CPU tensor carries rank 0's stop flag to every rank, so all stop at the
        same batch (StopRequested), and the global image count that weights the loss.
        """
        stop = 1.0 if self.is_main and self.stop is not None and self.stop.is_set() else 0.0
        flags = torch.tensor([stop, float(count), 1.0 if count == 0 else 0.0], dtype=torch.float64)
        dist.all_reduce(flags, group=self.control)
        if flags[0] > 0:
            raise StopRequested("stop requested by the supervisor")
        return int(flags[1]), bool(flags[2] > 0)

    def sum_cpu(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks, as float64 on the CPU."""
        total = values.detach().to("cpu", torch.float64).clone()
        dist.all_reduce(total, group=self.control)
        return total


class DistributedEpochRunner(EpochRunner):
    """The epoch loops of one rank: DDP steps over the rank's chunks, metrics summed over the ranks."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LrSchedule | None,
                 runtime: Runtime, freeze: FreezeReport | None, classes: list[str], hooks: FitHooks,
                 group: RankGroup) -> None:
        super().__init__(model, optimizer, schedule, runtime, freeze, classes, hooks)
        self.group = group
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=device_ids)

    def _confusion(self, y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        n = len(self.classes)
        return torch.bincount(y * n + pred, minlength=n * n)

    def _reduced_metrics(self, loss_sum: torch.Tensor, confusion: torch.Tensor) -> tuple[dict[str, Any], int]:
        totals = self.group.sum_cpu(torch.cat([loss_sum.reshape(1).to(torch.float64), confusion.to(torch.float64)]))
        counts = totals[1:].round().to(torch.int64).numpy()
        samples = int(counts.sum())
        loss = float(totals[0]) / samples if samples else None
        return metrics_from_confusion(counts, self.classes, loss), samples

    def train_epoch(self, source: BatchSource, epoch: int, epochs: int, max_batches: int = 0,
                    remaining_after: int = 0) -> dict[str, Any]:
        """Train one epoch in step with the other ranks; returns the train metrics over all ranks.

        A rank's loss is its chunk's summed cross-entropy × world / (images in the global batch); DDP
        averages gradients over the ranks, so each step is the mean-loss step of the whole global batch,
        also when chunks differ in size. Progress (rank 0) gives rank 0's running loss and the global
        images per second.
        """
        if self.freeze is not None:
            train_mode(self.model, self.freeze)
        else:
            self.model.train()
        hooks, group, world = self.hooks, self.group, self.group.world
        batches = source.num_batches(True)
        if max_batches:
            batches = min(batches, max_batches)
        loss_sum = torch.zeros((), device=self.rt.device)
        confusion = torch.zeros(len(self.classes) ** 2, dtype=torch.int64, device=self.rt.device)
        seen = seen_global = steps = 0
        start = last_report = time.perf_counter()
        for index, (x, y) in enumerate(source.batches(epoch, True), start=1):
            last = index == batches
            total, some_empty = group.control_step(int(y.shape[0]))
            if some_empty:  # DDP needs every rank in every step: skip the batch everywhere
                log.warning("epoch %d batch %d: a rank has no readable image; batch skipped", epoch, index)
            else:
                x, y = self._to_device(x, y)
                with self._autocast():
                    logits = self.ddp(x)
                    summed = F.cross_entropy(logits.float(), y, weight=self.loss_weight, reduction="sum")
                self._step(summed * (world / total))
                steps += 1
                seen += int(y.shape[0])
                seen_global += total
                loss_sum += summed.detach()
                confusion += self._confusion(y, logits.detach().argmax(1))
            now = time.perf_counter()
            if hooks.on_batch is not None and seen and (last or now - last_report >= hooks.progress_interval):
                last_report = now
                elapsed = now - start
                self.batch_seconds = elapsed / index
                hooks.on_batch(BatchProgress(
                    epoch=epoch, epochs=epochs, batch=index, batches=batches, loss=float(loss_sum) / seen,
                    images_per_second=seen_global / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=self.batch_seconds * (batches - index + remaining_after),
                ))
            if last:
                break
        metrics, samples = self._reduced_metrics(loss_sum, confusion)
        if samples == 0:
            raise RuntimeError(f"epoch {epoch} saw no readable training image")
        self.batch_seconds = (time.perf_counter() - start) / max(1, steps)
        return metrics

    def evaluate(self, source: BatchSource) -> dict[str, Any]:
        """Loss and metrics of a split over every rank's chunks (eval mode, no gradients, no DDP)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.rt.device)
        confusion = torch.zeros(len(self.classes) ** 2, dtype=torch.int64, device=self.rt.device)
        with torch.inference_mode(), self._autocast():
            for x, y in source.batches(0, False):
                self.group.control_step(int(y.shape[0]))
                if not len(y):
                    continue
                x, y = self._to_device(x, y)
                logits = self.model(x).float()
                loss_sum += F.cross_entropy(logits, y, weight=self.loss_weight, reduction="sum")
                confusion += self._confusion(y, logits.argmax(1))
        metrics, samples = self._reduced_metrics(loss_sum, confusion)
        if samples == 0:
            raise RuntimeError("no readable image to evaluate")
        return metrics


class DataParallel(Parallelism):
    """``training.fit`` in one rank of a data-parallel job."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group
        self.is_main = group.is_main

    def describe(self, runtime: Runtime) -> str:
        return f"{runtime.describe()} ×{self.group.world} ranks ({self.group.backend} DDP)"

    def shard(self, data: PreparedData) -> PreparedData:
        rank, world = self.group.rank, self.group.world
        return dataclasses.replace(
            data, train=shard_source(data.train, rank, world), val=shard_source(data.val, rank, world),
            test=None if data.test is None else shard_source(data.test, rank, world),
            test_dedup=None if data.test_dedup is None else shard_source(data.test_dedup, rank, world))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # Per-rank BatchNorm statistics would make a step differ from the single-process one; SyncBatchNorm
        # (CUDA only in torch) computes them over the global batch, with the same parameters and state keys.
        if self.group.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def runner(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LrSchedule, runtime: Runtime,
               freeze: FreezeReport, classes: list[str], hooks: FitHooks) -> EpochRunner:
        return DistributedEpochRunner(model, optimizer, schedule, runtime, freeze, classes, hooks, self.group)


@dataclasses.dataclass
class RankSpec:
    """What the supervisor hands every rank (plain data: it crosses a process boundary)."""

    config: JobConfig
    options: FitOptions
    backend: str
    devices: list[str]  # rank -> torch device
    store_port: int
    threads: int
    timeout: float
    progress_interval: float
    result_dir: str
    log_level: str
    supervisor_pid: int


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc; None when it is gone. ("", "") without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "", ""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def _exit_with_supervisor(pid: int) -> None:
    """A rank must not outlive its supervisor (e.g. a worker killed with SIGKILL).

    The supervisor counts as gone once its pid is, or is a zombie, or is another process (start time).
    """
    first = _process_state(pid)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            state = _process_state(pid)
            if state is None or state[0] == "Z" or (first is not None and state[1] != first[1]):
                os._exit(3)
    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _rank_hooks(events: Any, progress_interval: float) -> FitHooks:
    return FitHooks(
        on_start=lambda info: events.put(("start", dataclasses.asdict(info))),
        on_batch=lambda progress: events.put(("batch", progress.as_dict())),
        on_epoch=lambda report: events.put(("epoch", report.as_dict())),
        on_checkpoint=lambda epoch: events.put(("checkpoint", epoch)),
        progress_interval=progress_interval,
    )


def _export(result: FitResult, folder: Path) -> dict[str, Any]:
    """Rank 0's result: the weights to safetensors in ``folder``, the rest as plain data."""
    save_file(result.state_dict(), str(folder / RESULT_WEIGHTS))
    if result.verification is not None:
        (folder / VERIFICATION_FILE).write_bytes(result.verification.to_bytes())
    return {
        "classes": result.classes, "defect_class": result.defect_class, "mean": result.mean, "std": result.std,
        "image_size": result.image_size, "fingerprint": result.fingerprint, "weights_source": result.weights_source,
        "freeze": dataclasses.asdict(result.freeze), "metrics": result.metrics, "history": result.history,
        "epochs_run": result.epochs_run, "cosine_to_initial": result.cosine_to_initial,
        "unreadable_images": result.unreadable_images, "resumed_from_epoch": result.resumed_from_epoch,
        "runtime": result.runtime, "operating_point": result.operating_point, "class_weights": result.class_weights,
        "class_counts": result.class_counts,
    }


def _join_group(rank: int, spec: RankSpec, stop: Any) -> RankGroup:
    timeout = timedelta(seconds=spec.timeout)
    device = torch.device(spec.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", spec.store_port, is_master=False, timeout=timeout)
    world = len(spec.devices)
    dist.init_process_group(spec.backend, store=store, rank=rank, world_size=world, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if spec.backend != "gloo" else dist.group.WORLD
    return RankGroup(rank, world, device, spec.backend, control, stop if rank == 0 else None)


def rank_main(rank: int, spec: RankSpec, events: Any, stop: Any) -> None:
    """Entry point of a rank process; exits 0 after a result or a stop, 1 after an error (reported first)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's to handle
    _exit_with_supervisor(spec.supervisor_pid)
    setup_logging(f"trainer-rank{rank}", spec.log_level)
    log_context.job_id.set(spec.options.job_id)
    torch.set_num_threads(spec.threads)
    code = 0
    try:
        group = _join_group(rank, spec, stop)
        options = dataclasses.replace(spec.options, device=spec.devices[rank])
        hooks = _rank_hooks(events, spec.progress_interval) if rank == 0 else FitHooks()
        result = fit(spec.config, options, hooks, parallel=DataParallel(group))
        if rank == 0:
            events.put(("result", _export(result, Path(spec.result_dir))))
        dist.destroy_process_group()
    except StopRequested:
        events.put(("stopped", rank))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which ends the attempt
        message = exc.message if isinstance(exc, ZdmError) else str(exc)
        log.error("rank %d failed: %s", rank, "".join(traceback.format_exception(exc)))
        events.put(("error", rank, type(exc).__name__, message))
        code = 1
    events.close()
    events.join_thread()  # the supervisor reads until every rank exited, so this returns promptly
    sys.exit(code)
