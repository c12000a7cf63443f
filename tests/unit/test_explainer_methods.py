"""The methods added to the CAM core (LayerCAM, HiResCAM, layer fusion, pixel-level gradients), the one
method registry, tiled native-resolution explanations and the threshold-free scores."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from common.errors import InvalidArgument
from common.manifest import ExplanationDefaults, Manifest, Preprocessing
from common.models.zoo import get_spec
from common.overlap import overlap, threshold_free
from protos.zdm.v1 import explainer_pb2
from services.explainer import method_names
from services.explainer.cam import (
    METHODS,
    GradientOptions,
    explain_batch,
    fuse_maps,
    input_gradient_maps,
    layer_maps,
    parse_layers,
)
from services.explainer.engine import ExplainOptions, Tiling, explain_images, tile_windows
from services.explainer.model_store import LoadedModel
from tests.cam_support import reference_activation_and_gradient

torch.manual_seed(0)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


MODEL = Small().eval()
X = torch.randn(4, 3, 8, 8)
TARGET = [0, 1, 2, 1]


@pytest.mark.parametrize("layer", ["features.0", "features.3"])
def test_layercam_and_hirescam_match_the_element_wise_formulas(layer: str) -> None:
    a, g = reference_activation_and_gradient(MODEL, X, layer, TARGET)
    layercam, _ = explain_batch(MODEL, X, layer, "layercam", TARGET)
    hirescam, _ = explain_batch(MODEL, X, layer, "hirescam", TARGET)
    torch.testing.assert_close(layercam, torch.relu((torch.relu(g) * a).sum(1)).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hirescam, torch.relu((g * a).sum(1)).float(), atol=1e-5, rtol=1e-5)
    assert layercam.abs().max() > 0 and not torch.equal(layercam, hirescam)


def test_fusion_is_the_weighted_mean_of_the_single_layer_maps() -> None:
    shallow, _ = explain_batch(MODEL, X, "features.0", "gradcam", TARGET)
    deep, _ = explain_batch(MODEL, X, "features.5", "gradcam", TARGET)
    # one forward records both layers; the gradient to the shallow one still flows through the deep one
    (one, two), _ = layer_maps(MODEL, X, ["features.0", "features.5"], "gradcam", TARGET)
    torch.testing.assert_close(one, shallow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two, deep, atol=1e-5, rtol=1e-5)
    fused, _ = explain_batch(MODEL, X, "features.0:1+features.5:3", "gradcam", TARGET)
    assert fused.shape == (4, 8, 8)  # the finest layer's resolution
    up = nn.functional.interpolate((deep / deep.flatten(1).amax(1)[:, None, None])[:, None], size=(8, 8),
                                   mode="bilinear", align_corners=False)[:, 0]
    expected = 0.25 * shallow / shallow.flatten(1).amax(1)[:, None, None] + 0.75 * up
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fuse_maps([shallow], [1.0]), shallow)
    assert [(f.name, f.weight) for f in parse_layers("a+b:3")] == [("a", 0.25), ("b", 0.75)]
    for bad in ("a+a", "a:x", "a:-1", "a:0"):
        with pytest.raises(InvalidArgument):
            parse_layers(bad)
    with pytest.raises(InvalidArgument, match="unknown layer"):
        explain_batch(MODEL, X, "features.0+nope", "gradcam", TARGET)


def test_gradient_x_input_and_integrated_gradients_match_backward() -> None:
    x = X.clone().requires_grad_(True)
    copy.deepcopy(MODEL)(x)[torch.arange(4), torch.tensor(TARGET)].sum().backward()
    maps, logits = input_gradient_maps(MODEL, X, False, TARGET)
    torch.testing.assert_close(maps, (X * x.grad).sum(1).abs(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, MODEL(X).detach())
    steps = 4
    total = torch.zeros_like(X)
    for k in range(steps):
        point = ((k + 0.5) / steps * X).requires_grad_(True)
        copy.deepcopy(MODEL)(point)[torch.arange(4), torch.tensor(TARGET)].sum().backward()
        total += point.grad
    integrated, _ = input_gradient_maps(MODEL, X, True, TARGET, GradientOptions(steps=steps))
    torch.testing.assert_close(integrated, (X * total / steps).sum(1).abs(), atol=1e-5, rtol=1e-5)
    smooth, _ = input_gradient_maps(MODEL, X, False, TARGET, GradientOptions(smooth_samples=3))
    again, _ = input_gradient_maps(MODEL, X, False, TARGET, GradientOptions(smooth_samples=3))
    assert torch.equal(smooth, again) and not torch.allclose(smooth, maps)  # seeded noise, but noise
    with pytest.raises(InvalidArgument, match="smooth_samples"):
        input_gradient_maps(MODEL, X, False, None, GradientOptions(smooth_samples=1000))


@pytest.mark.parametrize("method", ["layercam", "hirescam", "grad-x-input", "integrated-gradients"])
def test_new_methods_leave_the_model_untouched_and_are_thread_safe(method: str) -> None:
    model = Small().eval()
    model.features[3].running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    request = METHODS[method]

    def run(i: int) -> Tensor:
        from services.explainer.cam import MapRequest

        return request.maps(model, inputs[i], MapRequest(layer="features.0+features.3", target=[i % 3, 0]))[0]

    sequential = [run(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, range(4)))
    for s, c in zip(sequential, concurrent, strict=True):
        torch.testing.assert_close(c, s)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules()) and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert threading.active_count() >= 1


def test_one_registry_names_every_proto_method() -> None:
    proto = {name for name in method_names.NAMES.values() if name}
    assert proto == set(METHODS)  # an enum value without an implementation, or the reverse, fails here
    assert method_names.ENUMS["gradcam++"] == explainer_pb2.METHOD_GRADCAM_PLUS_PLUS
    assert method_names.ENUMS["grad-x-input"] == explainer_pb2.METHOD_GRAD_X_INPUT
    assert method_names.name_of(999) == "unknown(999)"
    assert {m.family for m in METHODS.values()} == {"cam", "attention", "pixel"}


# --- threshold-free scores ------------------------------------------------------------------------


def test_threshold_free_scores_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    heat = np.round(rng.random((9, 11)), 1)  # ties on purpose
    gt = np.zeros((9, 11), bool)
    gt[2:5, 3:8] = True
    heat[gt] += 0.3
    energy, auc, best_f1, threshold = threshold_free(heat, gt)
    assert energy == pytest.approx(heat[gt].sum() / heat.sum())
    pos, neg = heat[gt], heat[~gt]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc == pytest.approx(pairs)
    f1s = {}
    for t in [-1.0, *np.unique(heat)]:
        pred = heat > t
        f1s[t] = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert best_f1 == pytest.approx(max(f1s.values()))
    pred = heat > threshold
    assert 2 * (pred & gt).sum() / (pred.sum() + gt.sum()) == pytest.approx(best_f1)
    scores = overlap(heat > 0.5, gt, heat)
    assert (scores.energy, scores.pixel_auc, scores.best_f1) == (energy, auc, best_f1)
    flat = np.ones_like(heat)
    e, a, f, _ = threshold_free(flat, gt)
    assert e == pytest.approx(gt.mean()) and a == 0.5 and f == pytest.approx(2 * gt.mean() / (1 + gt.mean()))
    assert threshold_free(np.zeros_like(heat), gt)[0] == 0.0
    assert overlap(heat > 0.5, gt).energy is None


# --- tiled explanations ---------------------------------------------------------------------------


def test_tile_windows_cover_the_image_with_edge_tiles() -> None:
    windows = tile_windows(100, 230, 64, 0.25)
    covered = np.zeros((100, 230), int)
    for y0, x0, y1, x1 in windows:
        assert (y1 - y0, x1 - x0) == (64, 64)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and windows[-1][2:] == (100, 230)
    assert tile_windows(50, 40, 64, 0.25) == [(0, 0, 50, 40)]


class TextureDetector(nn.Module):
    """Defect logit = mean squared Laplacian of the grey image: fine texture, which a resize averages away."""

    def __init__(self) -> None:
        super().__init__()
        self.grey = nn.Conv2d(3, 1, 1, bias=False)
        self.laplacian = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.energy = nn.Identity()
        with torch.no_grad():
            self.grey.weight.fill_(1 / 3)
            self.laplacian.weight.copy_(torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None])

    def forward(self, x: Tensor) -> Tensor:
        e = self.energy(self.laplacian(self.grey(x)) ** 2)
        defect = 20 * e.mean(dim=(1, 2, 3)) - 1
        return torch.stack([defect, torch.zeros_like(defect)], dim=1)


def test_tiled_map_finds_a_small_defect_that_the_resized_map_averages_away() -> None:
    size, input_size = 384, 64
    yy, xx = np.mgrid[0:size, 0:size]
    image = (100 + 60 * np.sin(yy / 80) * np.cos(xx / 70)).astype(np.float32)  # smooth part
    gt = np.zeros((size, size), bool)
    gt[250:280, 90:120] = True  # 0.6 % of the image
    checker = ((yy + xx) % 2 == 0) * 2 - 1
    image[gt] += 40 * checker[gt]  # a fine texture (pits), invisible after a 6x area resize
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    manifest = Manifest(name="t", architecture="test_resnet", classes=["defect", "ok"], defect_class="defect",
                        preprocessing=Preprocessing(image_size=input_size, mean=[0.5] * 3, std=[0.25] * 3),
                        explanation=ExplanationDefaults(layer="energy", threshold=0.3))
    loaded = LoadedModel(manifest, get_spec("test_resnet"), TextureDetector().eval())
    for method in ("gradcam", "layercam", "grad-x-input"):
        options = ExplainOptions(method=method, target_class="defect")
        _, (resized,) = explain_images(loaded, [rgb], options, [gt])
        _, (tiled,) = explain_images(loaded, [rgb], ExplainOptions(method=method, tiles=Tiling()), [gt])
        r, t = resized.scores, tiled.scores
        assert tiled.heatmap.shape == gt.shape and tiled.explained_class == "defect"
        assert t.pointing and t.energy > 0.5 and t.pixel_auc > 0.95, (method, t)
        assert t.energy > r.energy + 0.3 and t.iou > r.iou + 0.3, (method, r, t)
    with pytest.raises(InvalidArgument, match="tiles"):
        explain_images(loaded, [rgb], ExplainOptions(tiles=Tiling(tile_size=8, overlap=0.5)))
    with pytest.raises(InvalidArgument, match="overlap"):
        explain_images(loaded, [rgb], ExplainOptions(tiles=Tiling(overlap=0.95)))
