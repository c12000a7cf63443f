"""Explanations of published checkpoints on the real casting data, scored against the rough defect boxes.

1. **Defaults, all annotated images**: each model with its manifest's explanation defaults (or the
   ``--method/--layer/--threshold/--normalization`` given) on every test image that has a box mask:
   IoU / IoP / IoGT (mean and pooled) and the pointing game, overall and by box size, beside the
   trivial baselines (whole image, centred disc) and the pointing game's chance level.
2. **Search on one half, report on the other**: the annotated images are split in two by a seeded
   shuffle. The layer × threshold search (``services.explainer.search``) runs on the search half for
   each model × method × normalisation × region asked for; the chosen pairs and the defaults are then
   scored on the report half only, so no figure of the second table was tuned on its own images.

Everything is written under ``--out`` (CSV, charts, markdown, JSON); the data is read in place, never
copied. The last line of output is one JSON object with the headline figures.

Example (the stand-in and the real fine-tuned checkpoints alike)::

    python scripts/real_data_explain.py casting-frozen casting-unfrozen --registry ~/.zdm/registry \\
        --search-methods gradcam gradcam++ --search-regions all peak --out /tmp/zdm-real-data

Models are ``name``, ``name:version`` or ``name@alias``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common.registry import Registry  # noqa: E402
from services.explainer.annotated import AnnotatedSet, find_annotated  # noqa: E402
from services.explainer.engine import ExplainOptions  # noqa: E402
from services.explainer.evaluate import DatasetEvaluation, ModelEvaluation, evaluate_dataset  # noqa: E402
from services.explainer.model_store import ExplainerModelStore, LoadedModel  # noqa: E402
from services.explainer.search import SearchOutcome, search_defaults  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = DATA / "casting" / "test" / "def_front"
MASKS = DATA / "casting-defect-boxes" / "test" / "def_front"
SMALL = "small <10%"


def parse_ref(text: str) -> tuple[str, int, str]:
    if "@" in text:
        name, alias = text.split("@", 1)
        return name, 0, alias
    if ":" in text:
        name, version = text.split(":", 1)
        return name, int(version), ""
    return text, 0, ""


def split_halves(dataset: AnnotatedSet, seed: int) -> tuple[AnnotatedSet, AnnotatedSet]:
    """A seeded shuffle cut in two: (search half, report half)."""
    items = list(dataset.items)
    random.Random(seed).shuffle(items)
    cut = len(items) // 2
    search = sorted(items[:cut], key=lambda i: i.name)
    held_out = sorted(items[cut:], key=lambda i: i.name)
    return replace(dataset, items=search, without_mask=0), replace(dataset, items=held_out, without_mask=0)


def variant(loaded: LoadedModel, tag: str) -> LoadedModel:
    """The same network labelled ``<name> [<tag>]`` in the reports."""
    manifest = loaded.manifest.model_copy(update={"name": f"{loaded.manifest.name} [{tag}]"})
    return LoadedModel(manifest, loaded.spec, loaded.model)


def run_evaluation(models: list[LoadedModel], dataset: AnnotatedSet, opts: ExplainOptions | list[ExplainOptions],
                   out: Path, batch_size: int, what: str) -> DatasetEvaluation:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = None
    for event in evaluate_dataset(models, dataset, opts, batch_size=batch_size, out_dir=out):
        if isinstance(event, DatasetEvaluation):
            result = event
        elif event.name == models[-1].manifest.name:
            print(f"\r  {what}: {event.done}/{event.total} images", end="", file=sys.stderr, flush=True)
    print(f"\r  {what}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    assert result is not None and result.files is not None
    return result


def run_search(loaded: LoadedModel, dataset: AnnotatedSet, method: str, normalization: str, regions: list[str],
               layers: list[str], thresholds: list[float], batch_size: int, fusions: list[str]) -> list[SearchOutcome]:
    """One pass over ``dataset``; an outcome per region."""
    started = time.perf_counter()
    outcomes = []
    what = f"search {method or 'default method'}/{normalization or 'default normalisation'}/{'+'.join(regions)}"
    for event in search_defaults(loaded, dataset, method=method, normalization=normalization, regions=regions,
                                 layers=layers, fusions=fusions, thresholds=thresholds, batch_size=batch_size):
        if isinstance(event, SearchOutcome):
            outcomes.append(event)
        else:
            print(f"\r  {what}: {event.done}/{event.total} images", end="", file=sys.stderr, flush=True)
    print(f"\r  {what}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    assert len(outcomes) == len(regions)
    return outcomes


def headline(m: ModelEvaluation) -> dict[str, object]:
    small = m.by_size.get(SMALL)
    return {
        "model": m.label, "method": m.resolved.method, "layer": m.resolved.layer, "threshold": m.resolved.threshold,
        "normalization": m.resolved.normalization, "region": m.resolved.region, "images": m.overall.count,
        "mean_iou": round(m.overall.mean_iou, 4), "pooled_iou": round(m.overall.pooled_iou, 4),
        "mean_iop": round(m.overall.mean_iop, 4), "mean_iogt": round(m.overall.mean_iogt, 4),
        "pointing": round(m.overall.pointing_rate or 0.0, 4), "pred_area": round(m.overall.mean_pred_area, 4),
        "small_mean_iou": round(small.mean_iou, 4) if small else None,
        "small_pointing": round(small.pointing_rate or 0.0, 4) if small else None,
        "beats_baselines": m.beats_baselines,
    }


def baselines_line(e: DatasetEvaluation) -> dict[str, object]:
    small = e.baselines_by_size.get(SMALL)
    return {
        "whole_image_mean_iou": round(e.baselines.whole_image.mean_iou, 4),
        "centred_disc_mean_iou": round(e.baselines.centred_disc.mean_iou, 4),
        "pointing_chance": round(e.baselines.pointing_chance, 4),
        "small_images": small.images if small else 0,
        "small_whole_image_mean_iou": round(small.whole_image.mean_iou, 4) if small else None,
        "small_centred_disc_mean_iou": round(small.centred_disc.mean_iou, 4) if small else None,
        "small_pointing_chance": round(small.pointing_chance, 4) if small else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="name, name:version or name@alias")
    parser.add_argument("--registry", type=Path, default=Path.home() / ".zdm" / "registry")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--masks", type=Path, default=MASKS)
    parser.add_argument("--out", type=Path, default=Path("/tmp") / f"zdm-real-data-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--method", default="", help="section 1: method (default: the manifest's)")
    parser.add_argument("--layer", default="", help="section 1: layer (default: the manifest's)")
    parser.add_argument("--threshold", type=float, default=None, help="section 1: threshold (default: the manifest's)")
    parser.add_argument("--normalization", default="", help="section 1: max | minmax (default: the manifest's)")
    parser.add_argument("--region", default="all", choices=("all", "peak"), help="section 1: predicted region")
    parser.add_argument("--search-methods", nargs="*", default=[""], help="methods searched ('' = the manifest's)")
    parser.add_argument("--search-normalizations", nargs="*", default=[""], help="max / minmax ('' = the manifest's)")
    parser.add_argument("--search-regions", nargs="*", default=["all", "peak"], help="all / peak")
    parser.add_argument("--layers", nargs="*", default=[], help="candidate layers (default: the architecture's)")
    parser.add_argument("--fusions", nargs="*", default=[], help="candidate fusions 'a+b' of CAM layers (weights searched)")
    parser.add_argument("--thresholds", nargs="*", type=float, default=[], help="default: 0.1 .. 0.9")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search / report split")
    parser.add_argument("--no-search", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N annotated images (smoke runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    store = ExplainerModelStore(Registry(args.registry), capacity=len(args.models) + 1)
    models = [store.get(*parse_ref(ref)) for ref in args.models]
    dataset = find_annotated(args.images.resolve(), args.masks.resolve(), "binary", args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# Explanations on real data: {len(dataset.items)} annotated images of {args.images} "
          f"({dataset.without_mask} without a box); reports under {args.out}\n")

    opts = ExplainOptions(method=args.method, layer=args.layer, threshold=args.threshold,
                          normalization=args.normalization, region=args.region)
    everything = run_evaluation(models, dataset, opts, args.out / "all", args.batch_size, "defaults, all images")
    assert everything.files is not None
    print("## 1. All annotated images\n")
    print(everything.files.table_markdown)
    summary: dict[str, object] = {"all": {"baselines": baselines_line(everything),
                                          "models": [headline(m) for m in everything.models]}}

    if not args.no_search:
        search_half, report_half = split_halves(dataset, args.seed)
        print(f"## 2. Search on {len(search_half.items)} images, report on the other {len(report_half.items)} "
              f"(seed {args.seed})\n")
        variants: list[LoadedModel] = []
        variant_opts: list[ExplainOptions] = []
        searches = []
        for loaded in models:
            variants.append(variant(loaded, "defaults"))
            variant_opts.append(ExplainOptions())
            for method, normalization in itertools.product(args.search_methods, args.search_normalizations):
                outcomes = run_search(loaded, search_half, method, normalization, list(dict.fromkeys(args.search_regions)),
                                      args.layers, args.thresholds, args.batch_size, args.fusions)
                for outcome in outcomes:
                    best = outcome.best
                    tag = f"{outcome.method}/{outcome.normalization}/{outcome.region} searched"
                    print(f"- {loaded.manifest.name} v{loaded.manifest.version}, {outcome.method}, {outcome.normalization}, "
                          f"region {outcome.region}: best `{best.layer}` at {best.threshold:g} on the search half "
                          f"(objective over its {outcome.objective_images} masks < 50 %: mean IoU {best.mean_iou:.3f}, "
                          f"{best.score:+.3f} over the whole image; pred. area {best.predicted_area:.2f}, "
                          f"pointing {best.pointing:.2f})")
                    searches.append({"model": f"{loaded.manifest.name} v{loaded.manifest.version}",
                                     "method": outcome.method, "normalization": outcome.normalization,
                                     "region": outcome.region, "layer": best.layer, "threshold": best.threshold,
                                     "objective_images": outcome.objective_images,
                                     "search_mean_iou": round(best.mean_iou, 4), "search_score": round(best.score, 4),
                                     "candidates": [c.__dict__ for c in outcome.candidates]})
                    variants.append(variant(loaded, tag))
                    variant_opts.append(ExplainOptions(method=outcome.method, layer=best.layer, threshold=best.threshold,
                                                       normalization=outcome.normalization, region=outcome.region))
        print()
        held_out = run_evaluation(variants, report_half, variant_opts, args.out / "held_out", args.batch_size,
                                  "report half")
        assert held_out.files is not None
        print(held_out.files.table_markdown)
        (args.out / "searches.json").write_text(json.dumps(searches, indent=2))
        summary["held_out"] = {"baselines": baselines_line(held_out), "models": [headline(m) for m in held_out.models],
                               "searches": [{k: v for k, v in s.items() if k != "candidates"} for s in searches]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
