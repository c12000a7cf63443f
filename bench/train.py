"""Training-loop benchmark: the trainer's loop vs a bare PyTorch loop, and the CPU precision / layout gains.

In one run, on the same model (EfficientNet-Lite0 by default, 2 classes, random weights: speed does
not depend on them) and the same in-memory batches:

1. ``trainer``: the service's per-batch path (``EpochRunner.train_epoch``: frozen-BN-aware train
   mode, cancel check and progress callback before / after every batch, the lr schedule, the
   running loss and predictions, end-of-epoch metrics) under the runtime PRECISION_AUTO picks;
2. ``bare``: ``zero_grad / forward / cross_entropy / backward / step`` under the same runtime;
3. the bare loop under fp32, bf16 autocast, channels_last and both, for the gains AUTO weighs.

Each round runs one epoch of every loop back to back, in a rotating order, so load from other processes
hits them alike; a ratio is the median over rounds of the per-round ratio (paired, robust on a shared
machine), a throughput the total images over the total seconds. The last line of output is one JSON
object; the target is ``trainer_over_bare`` >= 0.95.

Usage: ``python bench/train.py [--arch efficientnet_lite0] [--image-size 224] [--batch 32] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.manifest import FreezeSpec  # noqa: E402
from common.models.freeze import apply_freeze  # noqa: E402
from common.models.zoo import build_model, get_spec  # noqa: E402
from services.trainer.data import InMemorySource  # noqa: E402
from services.trainer.optim import LrSchedule, build_optimizer  # noqa: E402
from services.trainer.runtime import Runtime, resolve_runtime  # noqa: E402
from services.trainer.spec import RecipeConfig  # noqa: E402
from services.trainer.training import EpochRunner, FitHooks  # noqa: E402

CLASSES = ["def_front", "ok_front"]


def _model(arch: str, image_size: int, runtime: Runtime) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), image_size=image_size)
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    return model.to(runtime.device, memory_format=fmt)


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, source: InMemorySource,
               runtime: Runtime) -> float:
    """Images per second of the plainest loop over the same batches."""
    model.train()
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    seen = 0
    start = time.perf_counter()
    for x, y in source.batches(1, True):
        x = x.to(runtime.device, memory_format=fmt)
        with torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype or torch.float32,
                            enabled=runtime.autocast_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += y.shape[0]
    return seen / (time.perf_counter() - start)


class Trainer:
    """The service's loop with the hooks a worker installs (cheap stand-ins for Redis calls)."""

    def __init__(self, arch: str, image_size: int, runtime: Runtime, source: InMemorySource) -> None:
        spec = get_spec(arch)
        self.model = _model(arch, image_size, runtime)
        freeze = apply_freeze(self.model, spec, FreezeSpec(mode="unfrozen"))
        recipe = RecipeConfig(lr=1e-4, head_lr=1e-3)
        optimizer = build_optimizer(self.model, spec, recipe)
        batches = source.num_batches(True)
        schedule = LrSchedule(optimizer, "cosine", 1000 * batches, batches)
        self.events = 0
        hooks = FitHooks(check=lambda: None, on_batch=self._on_batch, progress_interval=0.5)
        self.runner = EpochRunner(self.model, optimizer, schedule, runtime, freeze, CLASSES, hooks)
        self.source = source

    def _on_batch(self, _progress: object) -> None:
        self.events += 1

    def epoch(self) -> float:
        start = time.perf_counter()
        self.runner.train_epoch(self.source, 1, 1)
        return self.source.samples / (time.perf_counter() - start)


def _bare(arch: str, image_size: int, runtime: Runtime) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model(arch, image_size, runtime)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=2.5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="batches per measured epoch")
    parser.add_argument("--rounds", type=int, default=6, help="measured epochs per loop, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_spec(args.arch)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    images = rng.standard_normal((n, 3, args.image_size, args.image_size), dtype=np.float32)
    labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
    source = InMemorySource(images, labels, args.batch, seed=0, augmenter=None, unreadable=0)

    auto = resolve_runtime("auto", spec, args.image_size, "cpu")
    cpu = torch.device("cpu")
    variants = {
        "fp32": Runtime(cpu, None, False, False),
        "bf16": Runtime(cpu, torch.bfloat16, False, False),
        "channels_last": Runtime(cpu, None, spec.attention is None, False),
        "bf16_channels_last": Runtime(cpu, torch.bfloat16, spec.attention is None, False),
    }
    trainer = Trainer(args.arch, args.image_size, auto, source)
    bare_auto = _bare(args.arch, args.image_size, auto)
    bare_variants = {name: _bare(args.arch, args.image_size, rt) for name, rt in variants.items()}
    loops = {"trainer": trainer.epoch, "bare": lambda: bare_epoch(*bare_auto, source, auto)}
    for name, (model, opt) in bare_variants.items():
        loops[f"bare_{name}"] = (lambda m=model, o=opt, rt=variants[name]: bare_epoch(m, o, source, rt))
    for run in loops.values():  # warm-up: first iterations allocate and pick kernels
        run()
    names = list(loops)
    per_round: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        figures = {name: loops[name]() for name in order}
        per_round.append(figures)
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {figures[k]:.2f} img/s" for k in names), flush=True)

    def throughput(name: str) -> float:
        return len(per_round) * source.samples / sum(source.samples / r[name] for r in per_round)

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(r[a] / r[b] for r in per_round), 4)

    result = {
        "arch": args.arch,
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "auto_runtime": auto.describe(),
        "trainer_img_s": round(throughput("trainer"), 3),
        "bare_img_s": round(throughput("bare"), 3),
        "trainer_over_bare": ratio("trainer", "bare"),
        "fp32_img_s": round(throughput("bare_fp32"), 3),
        "bf16_img_s": round(throughput("bare_bf16"), 3),
        "channels_last_img_s": round(throughput("bare_channels_last"), 3),
        "bf16_channels_last_img_s": round(throughput("bare_bf16_channels_last"), 3),
        "bf16_gain": ratio("bare_bf16", "bare_fp32"),
        "channels_last_gain": ratio("bare_channels_last", "bare_fp32"),
        "bf16_channels_last_gain": ratio("bare_bf16_channels_last", "bare_fp32"),
        "auto_gain": ratio("bare", "bare_fp32"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
