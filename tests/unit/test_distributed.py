"""Multi-device training on CPU (gloo): 2 ranks equal 1 process on the same global batch; stop, resume, failure."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets.synthetic import generate_dataset
from common.errors import Cancelled, InvalidArgument
from common.metrics import classification_metrics
from services.trainer import checkpoints
from services.trainer.data import InMemorySource, LoaderSource, prepare_data
from services.trainer.distributed import fit_distributed, plan_devices
from services.trainer.ranks import metrics_from_confusion
from services.trainer.runtime import MAX_CPU_PROCESSES, check_devices
from services.trainer.shards import ShardedLoaderSource, ShardedMemorySource, plan_batches
from services.trainer.spec import JobConfig, parse_job_spec
from services.trainer.training import FitHooks, FitOptions, FitResult, fit
from tests.service.trainer_support import one_torch_thread

PER_RANK_BATCH = 6
EPOCHS = 6
REPO = Path(__file__).resolve().parents[2]

# These tests start a fork server and rank processes from the test process; run them in an
# interpreter of their own (test_distributed_isolated.py) so nothing they leave behind meets other tests.
pytestmark = pytest.mark.skipif(os.environ.get("ZDM_ISOLATED_DISTRIBUTED") != "1",
                                reason="runs in its own interpreter through test_distributed_isolated.py")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "ds", train_per_class=20, test_per_class=3, size=32, seed=0)
    return root


def _config(data_root: Path, *, batch: int, devices: int, epochs: int = EPOCHS) -> JobConfig:
    # The thesis preset: constant lr, no augmentation (its draws differ per rank), plain loss.
    # ConvNeXt has LayerNorm, no BatchNorm and no dropout: one step over a global batch is the same
    # computation whether one process or two ranks do it.
    spec = {"architecture": "test_convnext", "dataset_path": "ds", "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
            "recipe": {"epochs": epochs, "batch_size": batch, "image_size": 32, "precision": "PRECISION_FP32",
                       "lr": 1e-3, "seed": 3, "devices": devices, "preset": "thesis"}}
    return parse_job_spec(spec, [data_root])


def _max_difference(a: FitResult, b: FitResult) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


class Recorder:
    """Hooks that record what the worker would emit."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def hooks(self, **overrides: object) -> FitHooks:
        hooks = FitHooks(on_start=lambda info: self.events.append(("start", info)),
                         on_batch=lambda p: self.events.append(("batch", p)),
                         on_epoch=lambda r: self.events.append(("epoch", r.epoch)),
                         on_checkpoint=lambda e: self.events.append(("checkpoint", e)), progress_interval=0.0)
        for name, value in overrides.items():
            setattr(hooks, name, value)
        return hooks

    def kinds(self, kind: str) -> list[object]:
        return [value for k, value in self.events if k == kind]


def _no_rank_left() -> None:
    assert multiprocessing.active_children() == []


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """One process with batch 2b and two gloo ranks with batch b each: the same global batches."""
    tmp = tmp_path_factory.mktemp("runs")
    with one_torch_thread():
        single = fit(_config(data_root, batch=2 * PER_RANK_BATCH, devices=1),
                     FitOptions(job_id="single", cache_dir=tmp / "cache"))
        recorder = Recorder()
        started = time.perf_counter()
        ddp = fit_distributed(_config(data_root, batch=PER_RANK_BATCH, devices=2),
                              FitOptions(job_id="ddp", checkpoint_root=tmp / "ckpt", cache_dir=tmp / "cache"),
                              recorder.hooks())
        seconds = time.perf_counter() - started
    return single, ddp, recorder, tmp / "ckpt", seconds


# -- sharding, metrics, devices (no processes) -------------------------------------------------------

def _memory_source(samples: int, batch: int, *, augmenter=None) -> InMemorySource:
    images = torch.arange(samples, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return InMemorySource(images.numpy(), np.arange(samples) % 2, batch, seed=5, augmenter=augmenter, unreadable=0)


@pytest.mark.parametrize("samples", [36, 40, 41])
def test_two_rank_shards_make_up_the_single_process_batches(samples: int) -> None:
    single = _memory_source(samples, 2 * PER_RANK_BATCH)
    ranks = [ShardedMemorySource(_memory_source(samples, PER_RANK_BATCH), r, 2) for r in range(2)]
    assert ranks[0].num_batches(True) == ranks[1].num_batches(True) == single.num_batches(True)
    for epoch in (1, 2):
        expected = [x[:, 0, 0, 0].long().tolist() for x, _ in single.batches(epoch, True)]
        got = [torch.cat([a[0], b[0]])[:, 0, 0, 0].long().tolist()
               for a, b in zip(ranks[0].batches(epoch, True), ranks[1].batches(epoch, True), strict=True)]
        assert got == expected
    # evaluation: every sample exactly once, the same number of chunks on both ranks
    chunks = [list(r.batches(0, False)) for r in ranks]
    assert len(chunks[0]) == len(chunks[1]) == ranks[0].num_batches(False)
    seen = sorted(int(v) for c in chunks for x, _ in c for v in x[:, 0, 0, 0])
    assert seen == list(range(samples))


def test_a_last_partial_batch_is_kept_only_when_every_rank_gets_two_images() -> None:
    # 15 = 12 + 3: one process keeps the 3-image batch, two ranks would train one of them on a single image
    assert len(plan_batches(15, 6, 0, 2, True)) == 1 and _memory_source(15, 12).num_batches(True) == 2
    assert [len(c) for c in plan_batches(16, 6, 1, 2, True)] == [6, 2]
    assert [len(c) for c in plan_batches(13, 6, 1, 2, False)] == [6, 0]  # evaluation: chunks may be empty
    for samples in (13, 14, 25):  # one rank is the single-process plan
        assert len(plan_batches(samples, 12, 0, 1, True)) == _memory_source(samples, 12).num_batches(True)


def test_file_backed_shards_equal_the_single_process_batch_with_augmentation(data_root, tmp_path) -> None:
    data = prepare_data(data_root / "ds", image_size=32, batch_size=PER_RANK_BATCH, val_fraction=0.1, seed=1,
                        augment=True, loader_workers=0, cache_dir=tmp_path, in_memory_bytes=0)
    assert isinstance(data.train, LoaderSource)
    dataset = data.train.dataset
    single = LoaderSource(dataset, 2 * PER_RANK_BATCH, 1, 0)
    ranks = [ShardedLoaderSource(LoaderSource(dataset, PER_RANK_BATCH, 1, 0), r, 2) for r in range(2)]
    expected = list(single.batches(2, True))
    got = list(zip(ranks[0].batches(2, True), ranks[1].batches(2, True), strict=True))
    assert len(got) == len(expected) == ranks[0].num_batches(True)
    for (x, y), (a, b) in zip(expected, got, strict=True):
        assert torch.equal(torch.cat([a[0], b[0]]), x) and torch.equal(torch.cat([a[1], b[1]]), y)


def test_metrics_from_summed_confusion_matrices_equal_metrics_of_all_predictions() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    classes = ["a", "b", "c"]
    halves = [np.bincount(y[s] * 3 + p[s], minlength=9) for s in (slice(0, 20), slice(20, 50))]
    assert metrics_from_confusion(halves[0] + halves[1], classes, 0.5) == classification_metrics(y, p, classes, 0.5)


def test_devices_are_checked_against_the_host(data_root, monkeypatch) -> None:
    check_devices(MAX_CPU_PROCESSES, "cpu")
    with pytest.raises(InvalidArgument, match="devices are processes"):
        check_devices(MAX_CPU_PROCESSES + 1, "cpu")
    assert plan_devices(3, "cpu") == ("gloo", ["cpu"] * 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert plan_devices(2, None) == ("nccl", ["cuda:0", "cuda:1"])
    with pytest.raises(InvalidArgument, match="sees 1 CUDA device"):
        check_devices(2, "cuda:1")
    with pytest.raises(InvalidArgument, match="recipe.devices=3 but this trainer sees 2 CUDA"):
        _config(data_root, batch=4, devices=3)  # what SubmitJob answers: INVALID_ARGUMENT


# -- processes -----------------------------------------------------------------------------------------

def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(runs) -> None:
    single, ddp, recorder, ckpt, seconds = runs
    difference = _max_difference(single, ddp)
    print(f"\nmax |parameter difference| 2 gloo ranks x batch {PER_RANK_BATCH} vs 1 process x batch "
          f"{2 * PER_RANK_BATCH} after {EPOCHS} epochs: {difference:.3g} (distributed run {seconds:.1f} s)")
    assert difference < 1e-5
    assert 0.0 < single.cosine_to_initial < 0.9999  # it did train
    for split in ("train", "val", "test"):
        assert ddp.metrics[split]["samples"] == single.metrics[split]["samples"]
        assert ddp.metrics[split]["confusion"] == single.metrics[split]["confusion"]
        assert ddp.metrics[split]["loss"] == pytest.approx(single.metrics[split]["loss"], rel=1e-5)
    assert [h["train"]["loss"] for h in ddp.history] == pytest.approx([h["train"]["loss"] for h in single.history],
                                                                      rel=1e-5)
    assert ddp.epochs_run == EPOCHS and ddp.runtime == "cpu fp32 ×2 ranks (gloo DDP)"
    # rank 0's verification set (from its validation shard) comes back with the weights
    assert ddp.verification is not None and 0 < len(ddp.verification) <= single.metrics["val"]["samples"]
    # rank 0 alone reported (through the supervisor) and checkpointed
    (start,) = recorder.kinds("start")
    assert start.runtime == ddp.runtime and start.trainable_params == single.freeze.trainable
    assert recorder.kinds("epoch") == recorder.kinds("checkpoint") == list(range(1, EPOCHS + 1))
    batches = recorder.kinds("batch")
    per_epoch = batches[0].batches
    assert len(batches) == EPOCHS * per_epoch and batches[-1].epoch == EPOCHS and batches[-1].batch == per_epoch
    assert [p.name for p in (ckpt / "ddp").iterdir()] == [f"epoch-{EPOCHS:04d}"]
    _no_rank_left()


def test_cancel_stops_every_rank_and_a_rerun_resumes_from_the_checkpoint(runs, data_root, tmp_path) -> None:
    _single, uninterrupted, *_ = runs
    config = _config(data_root, batch=PER_RANK_BATCH, devices=2)
    options = FitOptions(job_id="stopped", checkpoint_root=tmp_path / "ckpt", cache_dir=tmp_path / "cache")

    def cancel(_epoch: int) -> None:
        # A hook that raises stops the ranks like the worker's check does (which is polled every 0.1 s;
        # the service test cancels that way): here the stop is requested as soon as epoch 1 is saved.
        raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        fit_distributed(config, options, Recorder().hooks(on_checkpoint=cancel))
    _no_rank_left()
    stopped_after = checkpoints.latest_epoch(options.checkpoint_root, "stopped")
    assert 1 <= stopped_after < EPOCHS, "the stop came too late to test a resume"
    resumed = fit_distributed(config, options, Recorder().hooks())
    _no_rank_left()
    assert resumed.resumed_from_epoch == stopped_after and resumed.epochs_run == EPOCHS
    assert [h["epoch"] for h in resumed.history] == list(range(1, EPOCHS + 1))
    assert _max_difference(resumed, uninterrupted) < 1e-6


def test_a_dead_rank_fails_the_attempt_and_leaves_no_process(runs, data_root, tmp_path) -> None:
    pids: list[int] = []
    killed: list[float] = []

    def kill_rank_1(_progress: object) -> None:
        if not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(time.monotonic())

    hooks = Recorder().hooks(on_batch=kill_rank_1)
    with pytest.raises(RuntimeError, match="rank 1 died"):
        fit_distributed(_config(data_root, batch=PER_RANK_BATCH, devices=2),
                        FitOptions(job_id="doomed", cache_dir=tmp_path / "cache"), hooks, on_launch=pids.extend)
    assert killed and time.monotonic() - killed[0] < 20
    _no_rank_left()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


SUPERVISOR = """
import sys
from pathlib import Path
import torch
from services.trainer.distributed import fit_distributed
from services.trainer.spec import parse_job_spec
from services.trainer.training import FitOptions

torch.set_num_threads(1)
spec = {"architecture": "test_convnext", "dataset_path": "ds", "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
        "recipe": {"epochs": 1000, "batch_size": 6, "image_size": 32, "precision": "PRECISION_FP32", "devices": 2}}
fit_distributed(parse_job_spec(spec, [Path(sys.argv[1])]), FitOptions(job_id="orphaned"),
                on_launch=lambda pids: print("ranks", *pids, flush=True))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_ranks_exit_when_their_worker_is_killed(data_root, tmp_path) -> None:
    # TMPDIR: the killed supervisor cannot remove its (empty) result folder
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(data_root)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ranks are running once this arrives
        assert line.startswith("ranks "), line
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(_running(p) for p in pids)
    finally:
        proc.kill()  # the worker dies without cleaning up (SIGKILL, OOM)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(_running(p) for p in pids):
        assert time.monotonic() < deadline, "a rank outlived its worker"
        time.sleep(0.1)
