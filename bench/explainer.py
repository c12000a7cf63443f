"""Explainer benchmark: our Grad-CAM against the PyPI package ``grad-cam`` on the same model, layer and batch.

In one run, on EfficientNet-Lite0 (timm ``tf_efficientnet_lite0`` with the offline ImageNet weights of
``efficientnet-lite0-pypi``, 1000 classes), the last conv layer (``conv_head``; ``--layer`` picks another),
224 px inputs (the casting test images when ../shared/data is there, else synthetic parts), batches of 1
and 16:

* ``ours``: ``services.explainer.cam.explain_batch`` + min-max normalisation + bilinear resize to the
  input size (what ``grad-cam`` returns: ``N x 224 x 224`` maps of the predicted class);
* ``grad-cam``: ``pytorch_grad_cam.GradCAM`` used as its documentation shows (a context manager per
  call, so its hooks do not slow down the other measurements);
* ``forward``: a plain inference forward of the same model (what classifying costs in torch).

Rounds interleave the three, so load from other processes hits them alike; the figures are medians
over rounds (ratios: median of the per-round ratios). Agreement: Pearson r between the two maps of
every image (batch 16 and batch 1), the minimum reported.

The last line of output is one JSON object; targets: ``speedup_vs_gradcam_b16`` >= 3.0,
``min_pearson_r`` >= 0.99, and the moonshot ``explain_over_classify_b16`` <= 1.2.

Then one line per newer method of the registry (``--method-rounds`` interleaved rounds at batch 16,
each beside our Grad-CAM at ``conv_head`` in the same round): ``<method>_over_gradcam_b16``, its cost per
image relative to our Grad-CAM (target <= 2.0), and where the ``grad-cam`` package has the method
(LayerCAM, HiResCAM) ``<method>_speedup_vs_package_b16`` with the Pearson r of the two maps. Methods:
LayerCAM and HiResCAM at ``conv_head`` and at the earlier ``blocks.4`` (14 x 14 at 224 px), a fusion of
``blocks.4`` and ``conv_head``, gradient x input, SmoothGrad (4 samples) and integrated gradients (4 steps;
the cost grows linearly with the steps and samples).

Usage: ``python bench/explainer.py [--rounds 10] [--threads 0]`` (needs ``pip install grad-cam==1.5.7``,
the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.datasets.synthetic import render_part  # noqa: E402
from common.images import decode_image, preprocess_batch  # noqa: E402
from common.models.weights import lite0_pypi_state_dict  # noqa: E402
from common.models.zoo import build_model  # noqa: E402
from services.explainer import heatmap as hm  # noqa: E402
from services.explainer.cam import METHODS, GradientOptions, MapRequest, explain_batch  # noqa: E402

CASTING_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "casting" / "test" / "def_front"
LAST_CONV = "conv_head"
SIZE = 224
MEAN = STD = [0.5, 0.5, 0.5]  # tf_efficientnet_lite0's pretrained config
BATCH = 16


def load_model() -> torch.nn.Module:
    model = build_model("efficientnet_lite0", 1000)
    model.load_state_dict(lite0_pypi_state_dict(model), strict=True)
    return model.eval()


def load_images(count: int) -> tuple[torch.Tensor, str]:
    files = sorted(CASTING_TEST.glob("*.jpeg"))[:count] if CASTING_TEST.is_dir() else []
    if len(files) == count:
        images = [decode_image(f.read_bytes()) for f in files]
        source = f"casting test/def_front ({count} images)"
    else:
        rng = np.random.default_rng(0)
        images = [np.repeat(render_part(rng, 300, ("pit",))[0][:, :, None], 3, axis=2) for _ in range(count)]
        source = f"synthetic parts ({count} images)"
    return torch.from_numpy(preprocess_batch(images, SIZE, MEAN, STD)), source


def ours(model: torch.nn.Module, x: torch.Tensor, layer: str) -> np.ndarray:
    cams, _ = explain_batch(model, x, layer, "gradcam")
    return hm.to_image_size(hm.normalize(cams, "minmax"), SIZE, SIZE).numpy()


def theirs(model: torch.nn.Module, x: torch.Tensor, layer: str) -> np.ndarray:
    from pytorch_grad_cam import GradCAM

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return cam(input_tensor=x, targets=None)


#: (label, method, layer spec, gradient options, grad-cam class name or None)
NEW_METHODS: tuple[tuple[str, str, str, GradientOptions, str | None], ...] = (
    ("layercam", "layercam", LAST_CONV, GradientOptions(), "LayerCAM"),
    ("hirescam", "hirescam", LAST_CONV, GradientOptions(), "HiResCAM"),
    ("layercam_blocks4", "layercam", "blocks.4", GradientOptions(), "LayerCAM"),
    ("hirescam_blocks4", "hirescam", "blocks.4", GradientOptions(), "HiResCAM"),
    ("gradcam_fusion", "gradcam", f"blocks.4+{LAST_CONV}", GradientOptions(), None),
    ("grad_x_input", "grad-x-input", "", GradientOptions(), None),
    ("smoothgrad4", "grad-x-input", "", GradientOptions(smooth_samples=4), None),
    ("integrated_gradients4", "integrated-gradients", "", GradientOptions(steps=4), None),
)


def ours_method(model: torch.nn.Module, x: torch.Tensor, method: str, layer: str,
                gradients: GradientOptions) -> np.ndarray:
    maps, _ = METHODS[method].maps(model, x, MapRequest(layer=layer, gradients=gradients))
    return hm.to_image_size(hm.normalize(maps, "minmax"), SIZE, SIZE).numpy()


def theirs_method(model: torch.nn.Module, x: torch.Tensor, class_name: str, layer: str) -> np.ndarray:
    import pytorch_grad_cam

    with getattr(pytorch_grad_cam, class_name)(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return cam(input_tensor=x, targets=None)


def new_methods(model: torch.nn.Module, x: torch.Tensor, rounds: int, only: list[str]) -> dict[str, float]:
    """Per-image cost of each newer method relative to our Grad-CAM (and to the package where it has it)."""
    result: dict[str, float] = {}
    for label, method, layer, gradients, package in NEW_METHODS:
        if only and label not in only:
            continue
        ours_maps = ours_method(model, x, method, layer, gradients)  # warm-up
        over, speedup = [], []
        for _ in range(rounds):
            base = seconds(lambda: ours(model, x, LAST_CONV))
            mine = seconds(lambda m=method, la=layer, g=gradients: ours_method(model, x, m, la, g))
            over.append(mine / base)
            if package:
                speedup.append(seconds(lambda p=package, la=layer: theirs_method(model, x, p, la)) / mine)
        result[f"{label}_over_gradcam_b16"] = round(statistics.median(over), 3)
        line = f"{label:>22}: {statistics.median(over):5.2f}x our Grad-CAM per image at batch {BATCH}"
        if package:
            theirs_maps = theirs_method(model, x, package, layer)
            r = min(pearson(ours_maps[i], theirs_maps[i]) for i in range(BATCH))
            result[f"{label}_speedup_vs_package_b16"] = round(statistics.median(speedup), 3)
            result[f"{label}_min_pearson_r"] = round(r, 5)
            line += f"   speedup vs grad-cam's {package} {statistics.median(speedup):5.2f}x   min Pearson r {r:.5f}"
        print(line, flush=True)
        model.zero_grad(set_to_none=True)
    return result


def forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--singles", type=int, default=4, help="batch-1 calls per round and method")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--layer", default=LAST_CONV, help="target layer (default: the last conv layer)")
    parser.add_argument("--method-rounds", type=int, default=3, help="rounds for each newer method (0 = skip)")
    parser.add_argument("--methods", nargs="*", default=[], help="labels of the newer methods to run (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layer = args.layer

    model = load_model()
    x, source = load_images(BATCH)
    print(f"model tf_efficientnet_lite0 (efficientnet-lite0-pypi ImageNet weights), layer {layer}, "
          f"{SIZE} px, {source}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    # agreement (and warm-up)
    a16, b16 = ours(model, x, layer), theirs(model, x, layer)
    r_values = [pearson(a16[i], b16[i]) for i in range(BATCH)]
    r_values += [pearson(ours(model, x[i:i + 1], layer)[0], theirs(model, x[i:i + 1], layer)[0])
                 for i in range(args.singles)]
    forward(model, x)

    methods: dict[str, Callable[[torch.Tensor], object]] = {
        "forward": lambda t: forward(model, t), "ours": lambda t: ours(model, t, layer),
        "gradcam": lambda t: theirs(model, t, layer)}
    per_image: dict[str, list[float]] = {f"{m}_b{b}": [] for m in methods for b in (1, BATCH)}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            per_image[f"{name}_b{BATCH}"].append(seconds(lambda fn=fn: fn(x)) / BATCH)
            singles = [seconds(lambda i=i, fn=fn: fn(x[i:i + 1])) for i in range(args.singles)]
            per_image[f"{name}_b1"].append(statistics.fmean(singles))
    model.zero_grad(set_to_none=True)  # grad-cam's backward leaves parameter gradients behind

    ms = {k: 1000 * statistics.median(v) for k, v in per_image.items()}

    def ratio(num: str, den: str) -> float:
        return statistics.median(n / d for n, d in zip(per_image[num], per_image[den], strict=True))

    for b in (1, BATCH):
        print(f"batch {b:>2}: ours {ms[f'ours_b{b}']:7.1f} ms/img   grad-cam {ms[f'gradcam_b{b}']:7.1f} ms/img   "
              f"forward {ms[f'forward_b{b}']:7.1f} ms/img   speedup {ratio(f'gradcam_b{b}', f'ours_b{b}'):.2f}x   "
              f"explain/classify {ratio(f'ours_b{b}', f'forward_b{b}'):.2f}", flush=True)
    print(f"Pearson r of the maps over {len(r_values)} images: min {min(r_values):.5f}, "
          f"median {statistics.median(r_values):.5f}")
    result = {
        "model": "tf_efficientnet_lite0", "layer": layer, "image_size": SIZE, "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        **{f"{k}_ms_per_image": round(v, 2) for k, v in sorted(ms.items())},
        "speedup_vs_gradcam_b1": round(ratio("gradcam_b1", "ours_b1"), 3),
        "speedup_vs_gradcam_b16": round(ratio(f"gradcam_b{BATCH}", f"ours_b{BATCH}"), 3),
        "explain_over_classify_b1": round(ratio("ours_b1", "forward_b1"), 3),
        "explain_over_classify_b16": round(ratio(f"ours_b{BATCH}", f"forward_b{BATCH}"), 3),
        "min_pearson_r": round(min(r_values), 5),
    }
    if args.method_rounds:
        result.update(new_methods(model, x, args.method_rounds, args.methods))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
