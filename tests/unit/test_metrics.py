"""Classification metrics and checkpoint cosine similarity against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import json_format

from common import metrics
from common.errors import InvalidArgument
from common.metrics import classification_metrics, cosine_similarity
from protos.zdm.v1 import common_pb2

# true:  a a a b b c      confusion (rows true): a [2 1 0]
# pred:  a b a b b b                             b [0 2 0]
#                                                c [0 1 0]
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 1, 0, 1, 1, 1]
NAMES = ["a", "b", "c"]


def test_hand_computed_example() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES, loss=0.25)
    assert m["confusion"] == [2, 1, 0, 0, 2, 0, 0, 1, 0]
    assert m["samples"] == 6 and m["class_names"] == NAMES and m["loss"] == 0.25
    # precision a 2/2, b 2/4, c 0/0 -> 0; recall a 2/3, b 2/2, c 0/1; f1 a 0.8, b 2/3, c 0
    per = {c["class_name"]: c for c in m["per_class"]}
    assert per["a"] == pytest.approx({"class_name": "a", "precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert per["b"] == pytest.approx({"class_name": "b", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert per["c"] == pytest.approx({"class_name": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_weighted"] == pytest.approx((3 * 1.0 + 2 * 0.5) / 6)
    assert m["recall_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 1.0) / 6)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 2 / 3) / 6)
    assert m["precision_macro"] == pytest.approx(1.5 / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 3)


def test_binary_defect_example() -> None:
    # 90 ok (class 1) / 10 defective (class 0); 8 defects caught, 3 false alarms.
    y_true = [0] * 10 + [1] * 90
    y_pred = [0] * 8 + [1] * 2 + [0] * 3 + [1] * 87
    m = classification_metrics(np.array(y_true), np.array(y_pred), ["def_front", "ok_front"])
    assert m["confusion"] == [8, 2, 3, 87]
    assert m["accuracy"] == pytest.approx(0.95)
    p0, r0 = 8 / 11, 8 / 10
    p1, r1 = 87 / 89, 87 / 90
    f0, f1 = 2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)
    assert m["per_class"][0]["f1"] == pytest.approx(f0)
    assert m["f1_weighted"] == pytest.approx(0.1 * f0 + 0.9 * f1)
    assert m["precision_macro"] == pytest.approx((p0 + p1) / 2)
    assert m["loss"] is None


def test_empty_and_bad_inputs() -> None:
    m = classification_metrics([], [], NAMES)
    assert m["samples"] == 0 and m["accuracy"] == 0.0 and m["f1_weighted"] == 0.0
    assert m["confusion"] == [0] * 9
    with pytest.raises(InvalidArgument, match="outside"):
        classification_metrics([0, 3], [0, 1], NAMES)
    with pytest.raises(InvalidArgument, match="outside"):
        classification_metrics([0, 1], [0, -1], NAMES)
    with pytest.raises(InvalidArgument, match="labels"):
        classification_metrics([0, 1], [0], NAMES)
    with pytest.raises(InvalidArgument):
        classification_metrics([], [], [])


def test_keys_are_the_proto_fields() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES, loss=0.5)
    # "threshold" is added where decisions are made at a threshold (services.trainer.operating_point)
    split_fields = {f.name for f in common_pb2.SplitMetrics.DESCRIPTOR.fields} - {"split", "threshold"}
    class_fields = {f.name for f in common_pb2.ClassMetrics.DESCRIPTOR.fields}
    assert set(m) == split_fields
    assert all(set(c) == class_fields for c in m["per_class"])
    message = json_format.ParseDict({"split": "val", **m}, common_pb2.SplitMetrics())
    assert list(message.confusion) == m["confusion"] and message.per_class[1].support == 2


def test_cosine_hand_computed() -> None:
    a = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "n": torch.tensor(3), "x": torch.ones(2)}
    b = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 1.0]), "n": torch.tensor(3), "x": torch.ones(3)}
    b["only_b"] = torch.ones(1)
    cos, compared, skipped = cosine_similarity(a, b)
    # [1, 0, 0, 1] . [1, 1, 0, 1] = 2; |a| = sqrt 2, |b| = sqrt 3
    assert cos == pytest.approx(2 / math.sqrt(6))
    assert compared == 2 and skipped == 3  # integer "n", mismatched "x", missing "only_b"


def test_cosine_identity_sign_zero_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(50, 7, generator=gen), "b": torch.randn(13, generator=gen).half()}
    assert cosine_similarity(state, state)[0] == pytest.approx(1.0)
    assert cosine_similarity(state, {k: -v for k, v in state.items()})[0] == pytest.approx(-1.0)
    assert cosine_similarity({"a": torch.zeros(3)}, {"a": torch.ones(3)})[0] == 0.0
    other = {k: v + 0.3 * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in state.items()}
    whole = cosine_similarity(state, other)
    monkeypatch.setattr(metrics, "_COSINE_CHUNK", 16)
    assert cosine_similarity(state, other)[0] == pytest.approx(whole[0], abs=1e-12)
    flat_a = torch.cat([v.double().ravel() for v in state.values()])
    flat_b = torch.cat([v.double().ravel() for v in other.values()])
    assert whole[0] == pytest.approx(float(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0)))
    with pytest.raises(InvalidArgument, match="share no"):
        cosine_similarity({"a": torch.ones(2)}, {"b": torch.ones(2)})


def test_balanced_accuracy_is_chance_for_any_constant_model_however_uneven() -> None:
    y_true = [0] * 5 + [1] * 95
    always_ok = classification_metrics(y_true, [1] * 100, ["def", "ok"])
    assert always_ok["accuracy"] == 0.95 and always_ok["balanced_accuracy"] == 0.5
    assert always_ok["per_class"][0]["recall"] == 0.0 and always_ok["per_class"][1]["precision"] == 0.95
    half = classification_metrics(y_true, [0, 0, 1, 1, 1] + [1] * 95, ["def", "ok"])
    assert half["balanced_accuracy"] == 0.7  # (2/5 + 1) / 2
