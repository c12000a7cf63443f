"""The classifier decides at the operating point the trainer stored, unless SetThreshold or the caller overrides it."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from common.images import encode_png
from protos.zdm.v1 import classifier_pb2, common_pb2
from tests.service import classifier_support as cs


def _publish(registry: cs.Registry, name: str, threshold: float | None) -> None:
    manifest = cs.manifest(name)
    if threshold is not None:
        manifest.operating_point = {"threshold": threshold, "goal": "recall", "target_recall": 0.99}
    registry.publish(manifest, cs.random_state(0))


def test_stored_operating_point_decides_until_an_override(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    settings = cs.settings_for(tmp_path, redis_url, key_prefix)
    registry = cs.Registry(settings.common.registry)
    _publish(registry, "tuned", 0.0123)
    _publish(registry, "legacy", None)  # published before operating points existed
    image = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    running = cs.Running(settings, redis_url)
    try:
        def classify(name: str) -> classifier_pb2.Verdict:
            ref = common_pb2.ModelRef(name=name)
            return running.stub.Classify(cs.request(image, model=ref), timeout=30)

        tuned = classify("tuned")
        assert tuned.threshold == pytest.approx(0.0123)
        assert tuned.defective == (tuned.defect_probability >= 0.0123)
        info = running.stub.GetModelInfo(classifier_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name="tuned")))
        assert info.threshold == pytest.approx(0.0123)
        assert classify("legacy").threshold == pytest.approx(settings.default_threshold)

        override = tuned.defect_probability / 2 + 0.5  # above the probability: not defective
        served = running.stub.SetThreshold(classifier_pb2.SetThresholdRequest(name="tuned", threshold=override))
        assert served.threshold == pytest.approx(override)
        again = classify("tuned")
        assert again.threshold == pytest.approx(override) and not again.defective
        assert classify("legacy").threshold == pytest.approx(settings.default_threshold)

        # the caller's threshold decides for its request only
        mine = running.stub.Classify(cs.request(image, model=common_pb2.ModelRef(name="tuned"), threshold=0.0),
                                     timeout=30)
        assert mine.threshold == 0.0 and mine.defective
        batch = running.stub.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(
            images=[common_pb2.Image(data=image)], model=common_pb2.ModelRef(name="tuned"), threshold=1.0), timeout=30)
        assert batch.verdicts[0].threshold == 1.0
        assert classify("tuned").threshold == pytest.approx(override)
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Classify(cs.request(image, threshold=1.5), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "threshold" in err.value.details()
    finally:
        running.close()
