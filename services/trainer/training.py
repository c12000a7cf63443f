"""The fit loop: build, load weights, freeze, train with Adam + schedule, evaluate, checkpoint, resume.

`fit` runs one job end to end and returns a `FitResult` (weights, metrics per split, history, cosine
similarity to the initial parameters) for the publisher. It knows nothing about Redis or gRPC: the
worker passes `FitHooks` — progress / epoch callbacks and a `check` called before every batch that
raises to stop the run (cancel, shutdown, lost lease).

A `Parallelism` says how one fit spreads over processes: the base class is the single process; a
multi-device job (`services.trainer.distributed`) runs the same `fit` in every data-parallel rank with
the subclass in `services.trainer.ranks`.

The per-batch path is kept lean (bench/train.py compares it with a bare PyTorch loop): the loss and
predictions stay on the device and are read once per progress report, not once per batch.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.manifest import defect_indices as manifest_defect_indices
from common.manifest import defect_probability
from common.metrics import classification_metrics, cosine_similarity
from common.models.freeze import FreezeReport, apply_freeze, train_mode
from common.models.weights import load_initial_weights
from common.models.zoo import ArchSpec, build_model, get_spec
from common.verification import VerificationSet
from services.trainer import checkpoints
from services.trainer.class_roles import resolve_defect_class
from services.trainer.data import DEFAULT_IN_MEMORY_BYTES, BatchSource, PreparedData, prepare_data
from services.trainer.operating_point import choose_operating_point, metrics_at_threshold
from services.trainer.optim import LrSchedule, build_optimizer
from services.trainer.recipes import class_weights
from services.trainer.runtime import Runtime, resolve_runtime
from services.trainer.spec import JobConfig
from services.trainer.verification import build_verification_set

log = logging.getLogger(__name__)


@dataclass
class BatchProgress:
    """Progress inside an epoch (the fields of the proto Progress)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    images_per_second: float
    eta_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EpochReport:
    """Metrics at the end of an epoch (the fields of the proto EpochSummary)."""

    epoch: int
    train: dict[str, Any]
    val: dict[str, Any]
    learning_rate: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StartInfo:
    """What is known once the data and the network are ready."""

    trainable_params: int
    total_params: int
    unreadable_images: int
    runtime: str
    resumed_from_epoch: int
    classes: list[str]


@dataclass
class FitHooks:
    on_start: Callable[[StartInfo], None] | None = None
    on_batch: Callable[[BatchProgress], None] | None = None
    on_epoch: Callable[[EpochReport], None] | None = None
    on_checkpoint: Callable[[int], None] | None = None
    # Called before every batch; raise (e.g. common.errors.Cancelled) to stop the run.
    check: Callable[[], None] | None = None
    # Minimum seconds between two on_batch calls (the last batch of an epoch is always reported).
    progress_interval: float = 0.5


@dataclass
class FitOptions:
    job_id: str = "local"
    checkpoint_root: Path | None = None  # None: no resumable checkpoints
    cache_dir: Path | None = None  # dataset statistics cache
    device: str | None = None  # None: CUDA when available, else CPU
    in_memory_bytes: int = DEFAULT_IN_MEMORY_BYTES
    test_duplicates: frozenset[str] = frozenset()  # test image paths that copy train / val ones (dataset check)


@dataclass
class FitResult:
    arch: ArchSpec
    model: nn.Module
    classes: list[str]
    defect_class: str
    mean: list[float]
    std: list[float]
    image_size: int
    fingerprint: str
    weights_source: str
    freeze: FreezeReport
    metrics: dict[str, dict[str, Any]]  # split -> classification_metrics dict
    history: list[dict[str, Any]]
    epochs_run: int
    seconds: float
    cosine_to_initial: float
    unreadable_images: int
    resumed_from_epoch: int = 0
    runtime: str = ""
    # The threshold chosen on validation (services.trainer.operating_point.OperatingPoint.as_dict()).
    operating_point: dict[str, Any] = field(default_factory=dict)
    class_weights: list[float] | None = None
    class_counts: list[int] = field(default_factory=list)  # training split, per class
    extra: dict[str, Any] = field(default_factory=dict)
    verification: VerificationSet | None = None  # published beside the weights (common.verification)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_digest(config: JobConfig) -> str:
    """Identifies what a checkpoint was trained for; a checkpoint of another config is not resumed."""
    relevant = config.model_dump(exclude={"publish_aliases", "labels", "model_name"})
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()


def build_network(config: JobConfig, arch: ArchSpec, num_classes: int) -> tuple[nn.Module, FreezeReport, str]:
    """Model with a new head, initial weights loaded, freeze policy applied."""
    model = build_model(arch.key, num_classes, pretrained=False, image_size=config.recipe.image_size)
    kind = "" if config.weights.kind == "default" else config.weights.kind
    source = load_initial_weights(model, arch, kind, config.weights.location, config.weights.key_map,
                                  image_size=config.recipe.image_size)
    report = apply_freeze(model, arch, config.freeze)
    return model, report, source


class EarlyStopping:
    """Stop when validation loss has not improved for ``patience`` epochs; keeps the best weights."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped = False
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float, model: nn.Module) -> None:
        if self.patience <= 0:
            return
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "best_loss": self.best_loss if self.best_epoch else None,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
        self.best_loss = float("inf") if state.get("best_loss") is None else float(state["best_loss"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.stopped = bool(state.get("stopped", False))
        self.best_state = best


class EpochRunner:
    """One model's training and evaluation passes: the per-batch hot path."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LrSchedule | None,
                 runtime: Runtime, freeze: FreezeReport | None, classes: list[str],
                 hooks: FitHooks | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.rt = runtime
        self.freeze = freeze
        self.classes = classes
        self.hooks = hooks or FitHooks()
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.grad_scaler else None
        self.batch_seconds: float | None = None  # running estimate for the ETA
        self.loss_weight: torch.Tensor | None = None  # class weights of the cross-entropy (None: plain)

    def set_class_weights(self, weights: list[float] | None) -> None:
        self.loss_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32,
                                                                     device=self.rt.device)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.rt.channels_last else torch.contiguous_format
        x = x.to(self.rt.device, non_blocking=True, memory_format=fmt)
        return x, y.to(self.rt.device, non_blocking=True)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.rt.device.type, dtype=self.rt.autocast_dtype or torch.float32,
                              enabled=self.rt.autocast_dtype is not None)

    def _step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (through the grad scaler when there is one), then the schedule's."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

    def train_epoch(self, source: BatchSource, epoch: int, epochs: int, max_batches: int = 0,
                    remaining_after: int = 0) -> dict[str, Any]:
        """Train one epoch; returns the running train metrics (predictions made while training).

        ``remaining_after``: batches left in later epochs, for the ETA.
        """
        if self.freeze is not None:
            train_mode(self.model, self.freeze)
        else:
            self.model.train()
        hooks = self.hooks
        batches = source.num_batches(True)
        if max_batches:
            batches = min(batches, max_batches)
        loss_sum = torch.zeros((), device=self.rt.device)
        preds: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        seen = 0
        start = last_report = time.perf_counter()
        for index, (x, y) in enumerate(source.batches(epoch, True), start=1):
            if hooks.check is not None:
                hooks.check()
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y, weight=self.loss_weight)
            self._step(loss)
            n = y.shape[0]
            seen += n
            loss_sum += loss.detach() * n
            preds.append(logits.detach().argmax(1))
            labels.append(y)
            now = time.perf_counter()
            last = index == batches
            if hooks.on_batch is not None and (last or now - last_report >= hooks.progress_interval):
                last_report = now
                elapsed = now - start
                self.batch_seconds = elapsed / index
                hooks.on_batch(BatchProgress(
                    epoch=epoch, epochs=epochs, batch=index, batches=batches,
                    loss=float(loss_sum) / seen, images_per_second=seen / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=self.batch_seconds * (batches - index + remaining_after),
                ))
            if last:
                break
        if seen == 0:
            raise RuntimeError(f"epoch {epoch} saw no readable training image")
        self.batch_seconds = (time.perf_counter() - start) / max(1, len(preds))
        return classification_metrics(torch.cat(labels).cpu().numpy(), torch.cat(preds).cpu().numpy(),
                                       self.classes, loss=float(loss_sum) / seen)

    def predict(self, source: BatchSource) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, softmax probabilities, mean loss) of a split with the current weights (eval mode)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.rt.device)
        probs: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        check = self.hooks.check
        with torch.inference_mode(), self._autocast():
            for x, y in source.batches(0, False):
                if check is not None:
                    check()
                x, y = self._to_device(x, y)
                logits = self.model(x).float()
                loss_sum += F.cross_entropy(logits, y, weight=self.loss_weight, reduction="sum")
                probs.append(logits.softmax(1))
                labels.append(y)
        if not labels:
            raise RuntimeError("no readable image to evaluate")
        y_true = torch.cat(labels).cpu().numpy()
        return y_true, torch.cat(probs).cpu().numpy(), float(loss_sum) / len(y_true)

    def evaluate(self, source: BatchSource) -> dict[str, Any]:
        """Loss and metrics (arg-max decisions) of a split with the current weights."""
        y_true, probs, loss = self.predict(source)
        return classification_metrics(y_true, probs.argmax(1), self.classes, loss=loss)


class Parallelism:
    """How one fit spreads over processes; this base class is a single process and changes nothing.

    ``services.trainer.ranks.DataParallel`` overrides it in each rank of a multi-device job:
    sharded batches, a DDP runner with reduced metrics, and only the main rank writes checkpoints.
    """

    is_main: bool = True

    def describe(self, runtime: Runtime) -> str:
        return runtime.describe()

    def shard(self, data: PreparedData) -> PreparedData:
        """This process's part of the data."""
        return data

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once the model is on its device, before the optimizer is built."""
        return model

    def runner(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LrSchedule, runtime: Runtime,
               freeze: FreezeReport, classes: list[str], hooks: FitHooks) -> EpochRunner:
        return EpochRunner(model, optimizer, schedule, runtime, freeze, classes, hooks)


def _restore(ckpt: checkpoints.Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule: LrSchedule, stopper: EarlyStopping) -> None:
    model.load_state_dict(ckpt.model, strict=True)
    optimizer.load_state_dict(ckpt.optimizer)
    schedule.load_state_dict(ckpt.scheduler)
    stopper.load_state_dict(ckpt.early_stopping, ckpt.best_model)
    checkpoints.restore_rng(ckpt.rng)


def fit(config: JobConfig, options: FitOptions | None = None, hooks: FitHooks | None = None,
        parallel: Parallelism | None = None) -> FitResult:
    """Train a validated job; resumes from the job's newest checkpoint when one matches the config."""
    options = options or FitOptions()
    hooks = hooks or FitHooks()
    parallel = parallel or Parallelism()
    started = time.perf_counter()
    arch = get_spec(config.architecture)
    recipe = config.recipe
    seed_everything(recipe.seed)
    data: PreparedData = prepare_data(
        Path(config.dataset_path), image_size=recipe.image_size, batch_size=recipe.batch_size,
        val_fraction=recipe.val_fraction, seed=recipe.seed, augment=recipe.augment,
        loader_workers=recipe.loader_workers, cache_dir=options.cache_dir, in_memory_bytes=options.in_memory_bytes,
        test_duplicates=options.test_duplicates, drop_test_duplicates=config.drop_test_duplicates,
    )
    data = parallel.shard(data)
    defect_class = resolve_defect_class(data.classes, config.defect_class)
    runtime = resolve_runtime(recipe.precision, arch, recipe.image_size, options.device)
    seed_everything(recipe.seed)  # the network's init does not depend on how the data was loaded
    model, freeze_report, weights_source = build_network(config, arch, len(data.classes))
    initial = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last
                     else torch.contiguous_format)
    model = parallel.prepare_model(model)
    optimizer = build_optimizer(model, arch, recipe)
    per_epoch = data.train.num_batches(True)
    if recipe.max_batches_per_epoch:
        per_epoch = min(per_epoch, recipe.max_batches_per_epoch)
    schedule = LrSchedule(optimizer, recipe.schedule, recipe.epochs * per_epoch,
                          round(recipe.warmup_epochs * per_epoch))
    stopper = EarlyStopping(recipe.early_stopping_patience)
    history: list[dict[str, Any]] = []
    digest = config_digest(config)
    start_epoch = 1
    ckpt = checkpoints.load(options.checkpoint_root, options.job_id) if options.checkpoint_root else None
    if ckpt is not None and ckpt.extra.get("config_digest") == digest:
        _restore(ckpt, model, optimizer, schedule, stopper)
        history = list(ckpt.history)
        start_epoch = ckpt.epoch + 1
        log.info("resuming job %s after epoch %d", options.job_id, ckpt.epoch)
    elif ckpt is not None:
        log.warning("ignoring checkpoint of job %s: it was written for another configuration", options.job_id)
    resumed_from = start_epoch - 1
    if hooks.on_start is not None:
        hooks.on_start(StartInfo(freeze_report.trainable, freeze_report.total, data.unreadable(),
                                 parallel.describe(runtime), resumed_from, data.classes))
    runner = parallel.runner(model, optimizer, schedule, runtime, freeze_report, data.classes, hooks)
    weights = class_weights(data.class_counts, recipe.class_balance)
    runner.set_class_weights(weights)
    for epoch in range(start_epoch, recipe.epochs + 1):
        if stopper.stopped:
            break
        epoch_start = time.perf_counter()
        lr = schedule.lr
        train_metrics = runner.train_epoch(data.train, epoch, recipe.epochs, recipe.max_batches_per_epoch,
                                           remaining_after=(recipe.epochs - epoch) * per_epoch)
        val_metrics = runner.evaluate(data.val)
        stopper.update(epoch, val_metrics["loss"], model)
        report = EpochReport(epoch, train_metrics, val_metrics, lr, time.perf_counter() - epoch_start)
        history.append(report.as_dict())
        if hooks.on_epoch is not None:
            hooks.on_epoch(report)
        if options.checkpoint_root is not None and parallel.is_main:
            checkpoints.save(options.checkpoint_root, options.job_id, checkpoints.Checkpoint(
                epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=schedule.state_dict(), early_stopping=stopper.state_dict(), history=history,
                rng=checkpoints.capture_rng(), best_model=stopper.best_state,
                extra={"config_digest": digest, "job_id": options.job_id},
            ))
            if hooks.on_checkpoint is not None:
                hooks.on_checkpoint(epoch)
    if not history:
        raise RuntimeError("no epoch was run")
    chosen = history[-1]
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        chosen = next(h for h in history if h["epoch"] == stopper.best_epoch)
    metrics = {"train": chosen["train"], "val": chosen["val"]}
    # The operating point: chosen on validation, reported on validation and test beside arg-max.
    # (A multi-device job reads the main rank's share of the validation split here.)
    # Several defect types: the score is the summed probability of the classes that are not ok.
    defect_indices = manifest_defect_indices(data.classes, defect_class, config.ok_classes)
    val_y, val_p, val_loss = runner.predict(data.val)
    point = choose_operating_point(np.isin(val_y, defect_indices), defect_probability(val_p, defect_indices),
                                   config.operating_point)
    metrics["val@op"] = metrics_at_threshold(val_y, val_p, data.classes, defect_indices, point.threshold, val_loss)
    test_splits = {"test": data.test, "test_dedup": data.test_dedup}
    for split, source in test_splits.items():
        if source is None:
            continue
        test_y, test_p, test_loss = runner.predict(source)
        metrics[split] = runner.evaluate(source)  # over every rank's share in a multi-device job
        metrics[f"{split}@0.5"] = metrics_at_threshold(test_y, test_p, data.classes, defect_indices, 0.5, test_loss)
        metrics[f"{split}@op"] = metrics_at_threshold(test_y, test_p, data.classes, defect_indices, point.threshold,
                                                      test_loss)
    verification = build_verification_set(model, data.val, data.mean, data.std, len(data.classes)) \
        if parallel.is_main else None
    final = {name: p.detach() for name, p in model.named_parameters()}
    cosine, _compared, _skipped = cosine_similarity(initial, final)
    return FitResult(
        arch=arch, model=model, classes=data.classes, defect_class=defect_class, mean=data.mean, std=data.std,
        image_size=recipe.image_size, fingerprint=data.fingerprint, weights_source=weights_source,
        freeze=freeze_report, metrics=metrics, history=history, epochs_run=int(history[-1]["epoch"]),
        seconds=time.perf_counter() - started, cosine_to_initial=cosine, unreadable_images=data.unreadable(),
        resumed_from_epoch=resumed_from, runtime=parallel.describe(runtime), operating_point=point.as_dict(),
        class_weights=weights, class_counts=list(data.class_counts), verification=verification,
    )
