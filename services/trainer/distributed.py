"""Multi-device training of one job: data-parallel ranks (torch.distributed DDP) run by the worker itself.

A job whose ``recipe.devices`` is N > 1 runs :func:`fit_distributed` instead of ``training.fit``. The
worker starts N rank processes on its host and supervises them:

- processes: ``forkserver`` start method (never ``fork``: the worker holds threads and Redis
  connections); the fork server preloads the trainer, so only a job's first ranks pay torch's import;
- rendezvous: a ``TCPStore`` the supervisor hosts on a localhost port the OS picks (no race for a
  "free" port); backend ``nccl`` with one GPU per rank on CUDA (ranks use ``cuda:k`` … ``cuda:k+N-1``
  for a worker on ``cuda:k``), ``gloo`` on CPU, where devices are processes (at most 8) with
  ``threads // N`` intra-op threads each;
- training (``services.trainer.ranks``, ``services.trainer.shards``): every rank runs ``training.fit``;
  ``recipe.batch_size`` is per rank, global batch ``i`` is exactly the single-process batch of
  ``N × batch_size`` images of the same seeded shuffle; gradients are all-reduced by DDP and weighted
  so a step is the single-process step; SyncBatchNorm on CUDA (per-rank BatchNorm statistics on CPU,
  where torch has no SyncBatchNorm); metrics are summed over the ranks; rank 0 alone writes the
  per-epoch checkpoints and reports;
- events: rank 0's hook calls come over a queue and the supervisor calls the worker's hooks, so
  progress, epoch and checkpoint events reach Redis as for a single-device job;
- stop: the supervisor polls the worker's ``check`` (cancel, shutdown, lost lease) every 0.1 s and
  sets a flag; rank 0 reads it before every batch and a per-batch all-reduce broadcasts it, so all
  ranks stop at the same batch; the supervisor then raises what ``check`` raised;
- failure: a rank that raises or dies ends the attempt: the others are stopped, whatever is left after
  a short grace is killed, and the supervisor raises (errors about the job, such as InvalidArgument
  for a bad dataset, keep their class, so the worker fails the job at once; anything else is retried).
  Collectives time out after ``collective_timeout``; a rank whose supervisor died exits by itself.
  No rank outlives :func:`fit_distributed`.

The final weights come back as a safetensors file (no pickled tensors), the rest of the result as
plain data; the worker publishes it like any other.
"""

from __future__ import annotations

import logging
import math
import os
import queue as queue_module
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from common.errors import error_class
from common.models.freeze import FreezeReport
from common.models.zoo import build_model, get_spec
from common.verification import VERIFICATION_FILE, VerificationSet
from services.trainer.ranks import RESULT_WEIGHTS, RankSpec, rank_main
from services.trainer.runtime import check_devices, default_device
from services.trainer.spec import JobConfig
from services.trainer.training import BatchProgress, EpochReport, FitHooks, FitOptions, FitResult, StartInfo

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_SECONDS = 900.0  # a collective (or the rendezvous) waiting longer fails its rank
STOP_GRACE_SECONDS = 60.0  # after a stop request the ranks get this long to finish their batch
FAILURE_GRACE_SECONDS = 5.0  # after a rank failed the others get this long to report, then are killed
CHECK_INTERVAL_SECONDS = 0.1  # how often the worker's check (cancel, shutdown, lease) is polled
PRELOAD = ["services.trainer.ranks"]  # imported once by the fork server
DIED = "died"  # the error kind of a rank that exited non-zero without reporting an error



def plan_devices(devices: int, device: str | None) -> tuple[str, list[str]]:
    """(backend, one torch device per rank); InvalidArgument when this host lacks the devices."""
    check_devices(devices, device)
    dev = default_device(device)
    if dev.type == "cuda":
        first = dev.index or 0
        return "nccl", [f"cuda:{first + r}" for r in range(devices)]
    return "gloo", ["cpu"] * devices


def _context() -> Any:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # takes effect when the fork server starts (the first job)
    return context


class _Supervisor:
    """The rank processes of one job: relays rank 0's events, polls the worker's check, reaps."""

    def __init__(self, processes: list[Any], events: Any, stop: Any, hooks: FitHooks) -> None:
        self.processes = processes
        self.events = events
        self.stop = stop
        self.hooks = hooks
        self.stop_reason: BaseException | None = None  # what the worker's check (or a hook) raised
        self.errors: list[tuple[int, str, str]] = []  # (rank, error class, message), first first
        self.exits: dict[int, int] = {}
        self.stopped: set[int] = set()
        self.result: dict[str, Any] | None = None
        self.deadline = math.inf

    def _request_stop(self, grace: float) -> None:
        self.stop.set()
        self.deadline = min(self.deadline, time.monotonic() + grace)

    def _relay(self, kind: str, payload: Any) -> None:
        hooks = self.hooks
        if kind == "start" and hooks.on_start is not None:
            hooks.on_start(StartInfo(**payload))
        elif kind == "batch" and hooks.on_batch is not None:
            hooks.on_batch(BatchProgress(**payload))
        elif kind == "epoch" and hooks.on_epoch is not None:
            hooks.on_epoch(EpochReport(**payload))
        elif kind == "checkpoint" and hooks.on_checkpoint is not None:
            hooks.on_checkpoint(payload)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "error":
            self.errors.append((message[1], message[2], message[3]))
            self._request_stop(FAILURE_GRACE_SECONDS)
        elif kind == "stopped":
            self.stopped.add(message[1])
        elif kind == "result":
            self.result = message[1]
        elif self.stop_reason is None:  # a run being stopped reports nothing more
            try:
                self._relay(kind, message[1])
            except Exception as exc:  # noqa: BLE001 - e.g. Redis gone: stop the ranks, then raise it
                self.stop_reason = exc
                self._request_stop(STOP_GRACE_SECONDS)

    def _check(self) -> None:
        if self.stop_reason is not None or self.hooks.check is None:
            return
        try:
            self.hooks.check()
        except Exception as exc:  # noqa: BLE001 - Cancelled / Interrupted / LeaseLost: raised once the ranks stopped
            log.info("stopping %d ranks: %s", len(self.processes), exc)
            self.stop_reason = exc
            self._request_stop(STOP_GRACE_SECONDS)

    def _reap(self) -> None:
        for rank, process in enumerate(self.processes):
            if rank in self.exits or process.exitcode is None:
                continue
            self.exits[rank] = process.exitcode
            if process.exitcode != 0:
                if not any(e[0] == rank for e in self.errors):  # died without a word: killed, OOM, a crash
                    self.errors.append((rank, DIED, f"exit code {process.exitcode}"))
                self._request_stop(FAILURE_GRACE_SECONDS)

    def run(self) -> None:
        """Until every rank has exited (or was killed after its grace period)."""
        last_check = 0.0
        while len(self.exits) < len(self.processes):
            try:
                self._dispatch(self.events.get(timeout=CHECK_INTERVAL_SECONDS))
            except queue_module.Empty:
                pass
            now = time.monotonic()
            if now - last_check >= CHECK_INTERVAL_SECONDS:
                last_check = now
                self._check()
            self._reap()
            if now > self.deadline and len(self.exits) < len(self.processes):
                for rank, process in enumerate(self.processes):
                    if process.exitcode is None:
                        log.warning("killing rank %d (pid %s): it did not stop in time", rank, process.pid)
                        process.kill()
                for process in self.processes:
                    process.join(timeout=10)
                self._reap()
                break
        while True:  # what the ranks sent just before they exited
            try:
                self._dispatch(self.events.get(timeout=0.05))
            except (queue_module.Empty, EOFError, OSError):
                break

    def close(self) -> None:
        """No rank outlives the job, whatever happened in the supervisor (KeyboardInterrupt included)."""
        started = [p for p in self.processes if p.pid is not None]
        for process in started:
            if process.exitcode is None:
                process.kill()
        for process in started:
            process.join(timeout=10)
        self.events.close()
        self.events.cancel_join_thread()

    def outcome_error(self) -> BaseException | None:
        """None when rank 0 delivered a result (a stop requested after the last batch is moot), else why not."""
        if self.result is not None and not self.errors:
            return None
        if self.stop_reason is not None:
            return self.stop_reason
        if self.errors:
            # The cause is an error about the job (bad data) or a rank that died; the other ranks' broken
            # connections are consequences.
            # Domain errors keep their class across the process boundary, and with it their retryability.
            rank, kind, message = next((e for e in self.errors if error_class(e[1]) is not None),
                                       next((e for e in self.errors if e[1] == DIED), self.errors[0]))
            domain = error_class(kind)
            if domain is not None:
                return domain(message)
            return RuntimeError(f"distributed training failed: rank {rank} {kind}: {message}")
        if self.stopped:
            return RuntimeError("the ranks stopped without a stop request")
        return RuntimeError("the ranks exited without a result")


def _import_result(config: JobConfig, meta: dict[str, Any], folder: Path, seconds: float) -> FitResult:
    arch = get_spec(config.architecture)
    model = build_model(arch.key, len(meta["classes"]), pretrained=False, image_size=config.recipe.image_size)
    model.load_state_dict(load_file(str(folder / RESULT_WEIGHTS)), strict=True)
    freeze = meta["freeze"]
    return FitResult(
        arch=arch, model=model, classes=list(meta["classes"]), defect_class=meta["defect_class"], mean=meta["mean"],
        std=meta["std"], image_size=meta["image_size"], fingerprint=meta["fingerprint"],
        weights_source=meta["weights_source"],
        freeze=FreezeReport(freeze["trainable"], freeze["total"], tuple(freeze["frozen_prefixes"]),
                            tuple(freeze["frozen_norms"])),
        metrics=meta["metrics"], history=meta["history"], epochs_run=meta["epochs_run"], seconds=seconds,
        cosine_to_initial=meta["cosine_to_initial"], unreadable_images=meta["unreadable_images"],
        resumed_from_epoch=meta["resumed_from_epoch"], runtime=meta["runtime"],
        operating_point=meta.get("operating_point", {}), class_weights=meta.get("class_weights"),
        class_counts=meta.get("class_counts", []), extra={"devices": config.recipe.devices},
        verification=VerificationSet.from_bytes(vfile.read_bytes()) if (vfile := folder / VERIFICATION_FILE).is_file()
        else None,
    )


def fit_distributed(config: JobConfig, options: FitOptions | None = None, hooks: FitHooks | None = None, *,
                    collective_timeout: float = COLLECTIVE_TIMEOUT_SECONDS,
                    on_launch: Callable[[list[int]], None] | None = None) -> FitResult:
    """``training.fit`` over ``config.recipe.devices`` data-parallel ranks on this host (module docstring).

    ``on_launch`` receives the ranks' process ids once they started (logs, tests).

    Raises:
        InvalidArgument: more devices than this host offers; also what ``fit`` raises about the job.
        whatever ``hooks.check`` raised: the run was stopped (cancel, shutdown, lost lease).
        RuntimeError: a rank failed or died. In every case all ranks have exited.
    """
    options = options or FitOptions()
    hooks = hooks or FitHooks()
    started = time.perf_counter()
    backend, devices = plan_devices(config.recipe.devices, options.device)
    world = len(devices)
    context = _context()
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=collective_timeout))
    result_dir = Path(tempfile.mkdtemp(prefix="zdm-ddp-"))
    spec = RankSpec(config=config, options=options, backend=backend, devices=devices, store_port=store.port,
                    threads=max(1, torch.get_num_threads() // world), timeout=collective_timeout,
                    progress_interval=hooks.progress_interval, result_dir=str(result_dir),
                    log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                    supervisor_pid=os.getpid())
    events, stop = context.Queue(), context.Event()
    # Not daemons: a rank may start DataLoader workers. close() reaps them whatever happens.
    processes = [context.Process(target=rank_main, args=(rank, spec, events, stop), name=f"zdm-rank{rank}")
                 for rank in range(world)]
    supervisor = _Supervisor(processes, events, stop, hooks)
    try:
        for process in processes:
            process.start()
        pids = [int(p.pid) for p in processes]
        log.info("job %s: %d %s ranks started (pids %s)", options.job_id, world, backend, pids)
        if on_launch is not None:
            on_launch(pids)
        supervisor.run()
        error = supervisor.outcome_error()
        if error is not None:
            raise error
        assert supervisor.result is not None
        return _import_result(config, supervisor.result, result_dir, time.perf_counter() - started)
    finally:
        supervisor.close()
        shutil.rmtree(result_dir, ignore_errors=True)
        del store  # closes the rendezvous port
