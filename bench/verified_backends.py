"""Throughput at zero verdict flips: every backend configuration judged on a version's verification set.

Run through ``python -m bench.backends --registry DIR --name MODEL [--dataset DIR]`` (see its docstring).
Each configuration is built exactly as named (no fallback), then:

- on the verification set: verdict flips vs the stored torch fp32 probabilities and max |dp|, and
  whether :class:`services.classifier.verification.SetVerifier` (the classifier's own check, with the
  default tolerance) would let it serve;
- with ``--dataset``: flips on up to ``--test-images`` test images vs torch fp32 computed here;
- img/s of ``infer`` on the verification inputs at batch 1 and 32 (best of ``--repeats`` windows).

INT8: NNCF post-training quantisation of the OpenVINO model, calibrated on training images (not on
the verification set, which would grade the calibration on its own data).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backends import infer_rate
from common.images import decode_image, preprocess_batch
from common.models.loading import load_published
from common.registry import Registry
from common.verification import compare, softmax
from services.classifier import export
from services.classifier.backends import Backend, BackendOptions, OpenVinoBackend, cpu_supports_bf16, create_backend
from services.classifier.verification import SetVerifier, verifier_for

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _images(folder: Path, limit: int, seed: int = 0) -> list[tuple[Path, int]]:
    """Up to ``limit`` (path, class index) of an ImageFolder split, a seeded random sample."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir())
             if f.suffix.lower() in _EXTENSIONS]
    random.Random(seed).shuffle(files)
    return files[:limit]


def _inputs(files: list[tuple[Path, int]], size: int, mean: list[float], std: list[float]) -> np.ndarray:
    return preprocess_batch([decode_image(f.read_bytes()) for f, _ in files], size, mean, std)


def _probs(backend: Backend, x: np.ndarray) -> np.ndarray:
    return softmax(np.concatenate([backend.infer(x[i:i + 32]) for i in range(0, len(x), 32)]))


def _int8(model: nn.Module, size: int, calibration: np.ndarray, *, keep_ends_f32: bool) -> OpenVinoBackend:
    """OpenVINO INT8 by NNCF post-training quantisation; optionally the first convolution and the head stay f32."""
    import nncf

    ov_model = export.to_openvino(model, size)
    ignored = None
    if keep_ends_f32:
        ops = ov_model.get_ordered_ops()
        first_conv = next(op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution")
        last_matmul = [op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"][-1:]
        ignored = nncf.IgnoredScope(names=[first_conv, *last_matmul])
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    kwargs = {"ignored_scope": ignored} if ignored is not None else {}
    quantized = nncf.quantize(ov_model, dataset, subset_size=len(calibration), **kwargs)
    return OpenVinoBackend(quantized, size, precision="f32")


def _configs(model: nn.Module, size: int, cache: Path, key: str, calibration: np.ndarray | None,
             cores: int) -> list[tuple[str, bool, Callable[[], Backend], int]]:
    """(label, lossy, build, callers) for every configuration worth measuring on this CPU."""

    def exact(kind: str, **options: object) -> Callable[[], Backend]:
        return lambda: create_backend(kind, model, size, cache, key,  # type: ignore[arg-type]
                                      options=BackendOptions(verify=False, **options))  # type: ignore[arg-type]

    configs: list[tuple[str, bool, Callable[[], Backend], int]] = [
        ("torch fp32", False, exact("torch"), 1),
        ("openvino f32", False, exact("openvino", precision="f32"), 1),
        ("openvino f32 ACCURACY mode", False,
         exact("openvino", precision="f32", openvino_config={"EXECUTION_MODE_HINT": "ACCURACY"}), 1),
        (f"openvino f32 THROUGHPUT, {cores} callers", False,
         exact("openvino", precision="f32", performance_hint="THROUGHPUT"), cores),
        ("onnxruntime", False, exact("onnxruntime"), 1),
    ]
    if cpu_supports_bf16():
        configs.insert(2, ("openvino bf16", True, exact("openvino", precision="bf16"), 1))
        configs.insert(3, ("openvino bf16 ACCURACY mode", True,
                           exact("openvino", precision="bf16", openvino_config={"EXECUTION_MODE_HINT": "ACCURACY"}), 1))
    if calibration is not None:
        configs.append(("openvino int8 (nncf)", True, lambda: _int8(model, size, calibration, keep_ends_f32=False), 1))
        configs.append(("openvino int8, first conv + head f32", True,
                        lambda: _int8(model, size, calibration, keep_ends_f32=True), 1))
    return configs


def _rate(backend: Backend, x: np.ndarray, batch: int, seconds: float, repeats: int, callers: int) -> float:
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    return infer_rate(backend, xb, seconds, repeats, callers, batches_per_caller=2)[0]


def run_verified(args: argparse.Namespace) -> None:
    import tempfile

    registry = Registry(args.registry)
    manifest = registry.resolve(args.name, args.version, default_alias="")
    model = load_published(registry, manifest)
    verifier = verifier_for(registry, manifest, model, 0.5)
    if not isinstance(verifier, SetVerifier):
        raise SystemExit(f"{manifest.name}:{manifest.version} has no verification set; nothing to verify against")
    pre = manifest.preprocessing
    size = pre.image_size
    cores = os.cpu_count() or 1
    calibration = test_x = test_ref = None
    if args.dataset is not None:
        if args.calibration_images:
            calibration = _inputs(_images(args.dataset / "train", args.calibration_images), size, pre.mean, pre.std)
        if args.test_images:
            test_x = _inputs(_images(args.dataset / "test", args.test_images, seed=1), size, pre.mean, pre.std)
            with torch.inference_mode():
                test_ref = softmax(np.concatenate([model(torch.from_numpy(test_x[i:i + 32])).numpy()
                                                   for i in range(0, len(test_x), 32)]))
    print(f"{manifest.name}:{manifest.version} ({manifest.architecture} @ {size}), verification set {verifier.images} "
          f"images, threshold {verifier.threshold:.4g}, tolerance {verifier.tolerance:g}; {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    test_col = f"test flips /{len(test_x)}" if test_x is not None else ""
    print(f"\n{'backend':40s} {'val flips':>9s} {'max|dp|':>9s} {test_col:>15s} {'b1 img/s':>9s} {'b32 img/s':>9s}  passes")
    rows = []
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as cache:
        for label, lossy, build, callers in _configs(model, size, Path(cache), "bench", calibration, cores):
            start = time.perf_counter()
            try:
                backend = build()
            except Exception as e:  # a benchmark reports and moves on
                print(f"{label:40s} failed: {type(e).__name__}: {e}")
                continue
            built_s = time.perf_counter() - start
            outcome = verifier.check(backend, lossy=lossy)
            test_flips = ""
            if test_x is not None and test_ref is not None:
                agreement = compare(test_ref, _probs(backend, test_x), manifest.defect_indices, verifier.threshold)
                test_flips = f"{agreement.flips} ({agreement.max_delta:.2g})"
            b1 = _rate(backend, verifier.inputs, 1, args.seconds, args.repeats, callers)
            b32 = _rate(backend, verifier.inputs, 32, args.seconds, args.repeats, callers)
            rows.append((label, outcome.passed, b1, b32))
            print(f"{label:40s} {outcome.flips:9d} {outcome.max_delta:9.2g} {test_flips:>15s} {b1:9.1f} {b32:9.1f}  "
                  f"{'yes' if outcome.passed else 'no: ' + outcome.reason}  (built in {built_s:.1f} s)", flush=True)
            del backend
    print(f"load average {os.getloadavg()[0]:.1f} (a shared machine: treat img/s as +-20 %)")
    reference = next((r for r in rows if r[0] == "torch fp32"), None)
    for column, name in ((3, "batch 32"), (2, "batch 1")):
        passing = [r for r in rows if r[1]]
        if passing and reference is not None:
            best = max(passing, key=lambda r: r[column])
            print(f"fastest passing at {name}: {best[0]} {best[column]:.1f} img/s "
                  f"({best[column] / reference[column]:.2f}x torch fp32)")
