"""The quality gate over gRPC: a model that learned nothing is never promoted, and no alias moves."""

from __future__ import annotations

import json
import shutil

import pytest

from common.datasets.synthetic import generate_dataset
from common.errors import NotFound
from protos.zdm.v1 import common_pb2, trainer_pb2
from tests.service.test_trainer_service import _state
from tests.service.trainer_support import IMAGE_SIZE, Harness, job_spec, make_dataset, make_settings, trainer_harness


@pytest.fixture
def harness(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    with trainer_harness(settings, redis_client) as h:
        yield h


def _no_signal_dataset(h: Harness):
    """Both classes hold defect-free parts (distinct images, so the dataset check has nothing to refuse):
    the label carries no signal. Jobs on it hold out half for validation (``NO_SIGNAL_VAL``): with 20
    images a class, a chance model clears the gate's balanced accuracy 0.75 with odds far below 1 %."""
    root = h.settings.common.data_roots[0] / "same"
    generate_dataset(root, train_per_class=40, test_per_class=4, size=IMAGE_SIZE)
    other = generate_dataset(h.settings.common.data_roots[0] / "other", train_per_class=40, test_per_class=4,
                             size=IMAGE_SIZE, seed=1)
    for split in ("train", "test"):
        defects = sorted((root / split / "def_front").glob("*.png"))
        parts = sorted((other / split / "ok_front").glob("*.png"))
        for defect, part in zip(defects, parts, strict=True):
            shutil.copyfile(part, defect)
    return root


NO_SIGNAL_VAL = 0.5


def _run(h: Harness, spec: trainer_pb2.JobSpec) -> trainer_pb2.Job:
    submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=spec))
    with h.running_worker():
        return h.wait_state(submitted.job_id, {"SUCCEEDED", "FAILED"}, timeout=120)


def test_a_model_that_learned_nothing_gets_no_alias(harness: Harness) -> None:
    h = harness
    good = job_spec(make_dataset(h.settings), name="part", epochs=2)  # gate off: v1 is production
    good.publish_aliases.append("production")
    assert _state(_run(h, good)) == "SUCCEEDED"
    assert h.registry.resolve("part", alias="production").version == 1

    useless = job_spec(_no_signal_dataset(h), name="part", epochs=2, gate=trainer_pb2.QualityGateSpec(),
                       val_fraction=NO_SIGNAL_VAL)
    useless.publish_aliases.append("production")
    job = _run(h, useless)
    assert _state(job) == "FAILED" and "quality gate failed" in job.error and "balanced accuracy" in job.error
    gate = job.result.gate
    assert not gate.passed and not gate.aliases_set and gate.on_fail == trainer_pb2.GATE_ACTION_FAIL
    assert gate.balanced_accuracy < 0.75 and gate.required_balanced_accuracy == pytest.approx(0.75)
    assert gate.majority_accuracy >= 0.5 and job.result.operating_point.threshold > 0
    assert not job.result.HasField("model") and h.registry.versions("part") == [1]  # nothing published
    assert h.registry.resolve("part", alias="production").version == 1

    useless.gate.on_fail = trainer_pb2.GATE_ACTION_PUBLISH_WITHOUT_ALIASES
    job = _run(h, useless)
    assert _state(job) == "SUCCEEDED" and not job.result.gate.passed and not job.result.gate.aliases_set
    assert job.result.model.version == 2 and "balanced accuracy" in job.result.gate.reason
    assert h.registry.resolve("part", alias="production").version == 1  # the alias did not move
    assert h.registry.aliases_of("part", 2) == []
    info = h.stub.GetModel(trainer_pb2.GetModelRequest(model=common_pb2.ModelRef(name="part", version=2)))
    manifest = json.loads(info.manifest_json)
    assert manifest["gate"]["passed"] is False and manifest["gate"]["balanced_accuracy"] < 0.75
    assert manifest["preset"] == "default" and manifest["operating_point"]["goal"] == "recall"


def test_the_job_event_stream_says_why(harness: Harness) -> None:
    h = harness
    spec = job_spec(_no_signal_dataset(h), name="quiet", epochs=1, gate=trainer_pb2.QualityGateSpec(),
                    val_fraction=NO_SIGNAL_VAL)
    job = _run(h, spec)
    messages = h.messages(job.job_id)
    assert any(m.startswith("quality gate failed") and "no alias moved" in m for m in messages)
    assert h.registry.versions("quiet") == []
    with pytest.raises(NotFound):
        h.registry.resolve("quiet")
