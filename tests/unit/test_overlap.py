"""Overlap scores (common/overlap.py) on crafted masks with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InvalidArgument
from common.overlap import OverlapAccumulator, centred_disc, overlap, pointing_hit


def box(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_hand_computed_scores() -> None:
    gt = box(10, 10, 0, 4, 0, 5)  # 20 px
    pred = box(10, 10, 2, 6, 0, 5)  # 20 px, 10 of them in gt
    s = overlap(pred, gt)
    assert (s.intersection, s.union, s.pred_pixels, s.mask_pixels) == (10, 30, 20, 20)
    assert s.iou == pytest.approx(1 / 3) and s.iop == 0.5 and s.iogt == 0.5
    assert s.pred_area == 0.2 and s.mask_area == 0.2 and s.pointing is None

    inside = box(10, 10, 0, 1, 0, 10)  # prediction inside gt's rows 0..0: IoP 1, IoGT 5/20
    s = overlap(inside & gt, gt)
    assert (s.iou, s.iop, s.iogt) == (0.25, 1.0, 0.25)


def test_empty_prediction_scores_zero() -> None:
    gt = box(4, 4, 1, 3, 1, 3)
    s = overlap(np.zeros((4, 4), bool), gt)
    assert (s.iou, s.iop, s.iogt, s.pred_area) == (0.0, 0.0, 0.0, 0.0)


def test_pointing_game() -> None:
    gt = box(5, 5, 0, 2, 0, 2)
    heat = np.zeros((5, 5))
    heat[1, 1] = 1.0
    assert pointing_hit(heat, gt) and overlap(gt, gt, heat).pointing is True
    heat[4, 4] = 2.0
    assert not pointing_hit(heat, gt)
    assert not pointing_hit(np.ones((5, 5)), gt)  # a constant map points nowhere
    tie = np.zeros((5, 5))
    tie[0, 1] = tie[4, 4] = 1.0
    assert pointing_hit(tie, gt)  # first maximum in row-major order


def test_pooled_differs_from_mean() -> None:
    acc = OverlapAccumulator()
    big = box(20, 20, 0, 10, 0, 10)  # 100 px, predicted exactly
    acc.add(big, big)
    small_gt = box(20, 20, 18, 20, 18, 20)  # 4 px
    small_pred = box(20, 20, 0, 2, 18, 20)  # 4 px, disjoint
    acc.add(small_pred, small_gt)
    scores = acc.summary().scores
    assert scores.count == 2 and len(acc) == 2
    assert scores.mean_iou == pytest.approx(0.5) and scores.mean_iop == 0.5 and scores.mean_iogt == 0.5
    assert scores.pooled_iou == pytest.approx(100 / 108)
    assert scores.pooled_iop == pytest.approx(100 / 104) and scores.pooled_iogt == pytest.approx(100 / 104)
    assert scores.mean_mask_area == pytest.approx((0.25 + 0.01) / 2)
    assert scores.pointing_rate is None


def test_baselines() -> None:
    acc = OverlapAccumulator()
    gt1 = box(10, 10, 3, 7, 3, 7)  # 16 px, centred: area 0.16
    gt2 = box(10, 20, 0, 2, 0, 20)  # 40 px, top band: area 0.2
    heat1 = np.zeros((10, 10))
    heat1[5, 5] = 1.0  # hit
    heat2 = np.zeros((10, 20))
    heat2[9, 0] = 1.0  # miss
    acc.add(gt1, gt1, heat1)
    acc.add(np.zeros((10, 20), bool), gt2, heat2)
    summary = acc.summary()
    assert summary.scores.pointing_rate == 0.5
    assert summary.pointing_chance == pytest.approx(0.18)
    assert summary.pointing_centre == 0.5  # centre (5, 5) in gt1, (5, 10) not in gt2

    whole = summary.whole_image
    assert whole.mean_iou == pytest.approx((0.16 + 0.2) / 2) and whole.mean_iogt == 1.0
    assert whole.pooled_iou == pytest.approx(56 / 300) and whole.pooled_iop == pytest.approx(56 / 300)
    assert whole.mean_pred_area == 1.0

    disc1, disc2 = centred_disc(10, 10, 0.18), centred_disc(10, 20, 0.18)
    assert abs(disc1.mean() - 0.18) < 0.05 and abs(disc2.mean() - 0.18) < 0.05
    assert disc1[5, 5] and not disc1[0, 0]
    expected_iou = [overlap(disc1, gt1).iou, overlap(disc2, gt2).iou]
    assert overlap(disc2, gt2).iou == 0.0  # a centred disc misses the top band
    assert summary.centred_disc.mean_iou == pytest.approx(np.mean(expected_iou))
    assert summary.centred_disc.mean_iogt == pytest.approx(np.mean([(disc1 & gt1).sum() / 16, 0.0]))
    assert set(summary.as_dict()) == {"scores", "whole_image", "centred_disc", "pointing_chance",
                                      "pointing_centre", "energy_chance", "pixel_auc_chance", "best_f1_chance"}


def test_errors() -> None:
    gt = box(4, 4, 0, 2, 0, 2)
    with pytest.raises(InvalidArgument, match="differ in size"):
        overlap(np.zeros((4, 5), bool), gt)
    with pytest.raises(InvalidArgument, match="no pixel"):
        overlap(gt, np.zeros((4, 4), bool))
    with pytest.raises(InvalidArgument, match="2-D"):
        overlap(np.zeros((1, 4, 4), bool), gt)
    with pytest.raises(InvalidArgument, match="differ in size"):
        overlap(gt, gt, np.zeros((3, 3)))
    with pytest.raises(InvalidArgument, match="no images"):
        OverlapAccumulator().summary()
