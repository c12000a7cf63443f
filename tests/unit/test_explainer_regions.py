"""The "peak" region: only the connected part of the thresholded map around the heatmap's maximum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import InvalidArgument
from common.manifest import ExplanationDefaults, Manifest, Preprocessing
from common.models.zoo import build_model, get_spec
from common.overlap import overlap
from services.explainer import heatmap as hm
from services.explainer.engine import ExplainOptions, explain_images
from services.explainer.model_store import LoadedModel
from services.explainer.regions import apply_region, peak_region
from services.explainer.search import peak_threshold_sweep


def test_peak_region_keeps_the_component_of_the_maximum() -> None:
    heat = np.zeros((8, 10), np.float32)
    heat[1:3, 1:3] = 0.6  # first blob
    heat[5:7, 6:9] = 0.8  # second blob, holds the maximum
    heat[6, 7] = 1.0
    heat[4, 5] = 0.7  # touches the second blob diagonally: 8-connected, kept
    mask = heat > 0.5
    kept = peak_region(mask, heat)
    expected = np.zeros_like(mask)
    expected[5:7, 6:9] = True
    expected[4, 5] = True
    assert np.array_equal(kept, expected)
    assert np.array_equal(peak_region(heat > 1.0, heat), heat > 1.0)  # the maximum is not marked: unchanged
    assert np.array_equal(apply_region(mask, heat, "all"), mask)
    with pytest.raises(InvalidArgument, match="region"):
        apply_region(mask, heat, "largest")


def test_peak_sweep_equals_thresholding_each_time() -> None:
    rng = np.random.default_rng(1)
    heat = rng.random((20, 24)).astype(np.float32)
    gt = np.zeros((20, 24), bool)
    gt[4:12, 5:15] = True
    thresholds = [0.2, 0.5, 0.8, 0.95]
    iou, area = peak_threshold_sweep(heat, gt, thresholds)
    for k, t in enumerate(thresholds):
        expected = overlap(peak_region(hm.threshold(torch.from_numpy(heat), t).numpy(), heat), gt)
        assert iou[k] == pytest.approx(expected.iou) and area[k] == pytest.approx(expected.pred_area)


def test_engine_peak_region_is_one_component_with_the_maximum() -> None:
    import cv2

    torch.manual_seed(0)
    manifest = Manifest(name="r", architecture="test_resnet", classes=["a", "b"], defect_class="a",
                        preprocessing=Preprocessing(image_size=64, mean=[0.5] * 3, std=[0.25] * 3),
                        explanation=ExplanationDefaults(layer="layer2", threshold=0.2))
    loaded = LoadedModel(manifest, get_spec("test_resnet"), build_model("test_resnet", 2, image_size=64).eval())
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _, (everything,) = explain_images(loaded, [image], ExplainOptions())
    _, (peak,) = explain_images(loaded, [image], ExplainOptions(region="peak"))
    assert np.array_equal(everything.heatmap, peak.heatmap)
    assert peak.mask.sum() <= everything.mask.sum() and not (peak.mask & ~everything.mask).any()
    count, _ = cv2.connectedComponents(peak.mask.astype(np.uint8), connectivity=8)
    assert count == 2  # background + one region
    assert peak.mask.flat[int(np.argmax(peak.heatmap))]
    with pytest.raises(InvalidArgument, match="region"):
        explain_images(loaded, [image], ExplainOptions(region="nope"))
