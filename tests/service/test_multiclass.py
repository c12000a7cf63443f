"""Several defect types and several ok classes, end to end over real gRPC: train, serve, explain."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.datasets.synthetic import render_part
from common.images import encode_png
from common.settings import CommonSettings, ExplainerSettings
from protos.zdm.v1 import classifier_pb2, common_pb2, explainer_pb2, explainer_pb2_grpc, trainer_pb2
from services.explainer.__main__ import build as build_explainer
from tests.service.classifier_support import Running, delete_prefix, request, settings_for
from tests.service.trainer_support import IMAGE_SIZE, job_spec, make_settings, trainer_harness

# Two defect types and two ok classes (ok_* names: no ok_classes needed in the job).
KINDS = {"chip": ("chip",), "crack": ("crack",), "ok_a": (), "ok_b": ()}


def _dataset(root: Path, train: int, test: int) -> Path:
    for split_index, (split, n) in enumerate((("train", train), ("test", test))):
        for class_index, (cls, kinds) in enumerate(KINDS.items()):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                image, _mask = render_part(np.random.default_rng([7, split_index, class_index, i]), IMAGE_SIZE, kinds)
                (folder / f"{cls}_{i:03d}.png").write_bytes(encode_png(image))
    return root


def test_several_defect_types_train_serve_and_explain(tmp_path, redis_url, redis_client, key_prefix, registry_root):
    settings = make_settings(tmp_path, redis_url, key_prefix, registry_root)
    dataset = _dataset(settings.common.data_roots[0] / "multi", train=10, test=3)
    with trainer_harness(settings, redis_client) as h:
        submitted = h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=job_spec(dataset, name="multi", epochs=2)))
        assert [c.class_name for c in submitted.dataset_report.splits[0].classes] == list(KINDS)
        with h.running_worker():
            job = h.wait_state(submitted.job_id, {"SUCCEEDED", "FAILED"}, timeout=120)
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
        test = next(m for m in job.result.metrics if m.split == "test")
        assert [c.class_name for c in test.per_class] == list(KINDS) and len(test.confusion) == 16
        info = h.stub.GetModel(trainer_pb2.GetModelRequest(model=job.result.model))
        assert list(info.classes) == list(KINDS) and list(info.ok_classes) == ["ok_a", "ok_b"]
        assert info.defect_class == "chip" and json.loads(info.manifest_json)["ok_classes"] == ["ok_a", "ok_b"]

        # a job naming ok classes that do not exist is refused at submit
        bad = job_spec(dataset, name="multi")
        bad.ok_classes.append("good")
        with pytest.raises(grpc.RpcError) as err:
            h.stub.SubmitJob(trainer_pb2.SubmitJobRequest(job=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ok_classes" in err.value.details()

    prefix = f"{key_prefix}:clf"
    served = Running(settings_for(tmp_path, redis_url, prefix), redis_url)
    try:
        model = served.stub.GetModelInfo(classifier_pb2.GetModelInfoRequest())
        assert list(model.info.ok_classes) == ["ok_a", "ok_b"]
        images = sorted((dataset / "test").rglob("*.png"))
        for path in images:
            verdict = served.stub.Classify(request(path.read_bytes()))
            probs = {p.class_name: p.probability for p in verdict.probabilities}
            assert list(probs) == list(KINDS) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert verdict.defect_probability == pytest.approx(probs["chip"] + probs["crack"], abs=1e-6)
            assert verdict.defect_probability == pytest.approx(1 - probs["ok_a"] - probs["ok_b"], abs=1e-5)
            assert verdict.defective == (verdict.defect_probability >= verdict.threshold)
            assert verdict.defect_type == max(("chip", "crack"), key=probs.__getitem__)
            assert verdict.predicted_class == max(probs, key=probs.__getitem__)
    finally:
        served.close()
        delete_prefix(redis_url, prefix)

    server, _ = build_explainer(ExplainerSettings(port=0, common=CommonSettings(registry=registry_root)))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        explainer = explainer_pb2_grpc.ExplainerStub(channel)
        image = common_pb2.Image(data=(dataset / "test" / "crack" / "crack_000.png").read_bytes())
        for target in ("", "crack", "chip", "ok_b"):
            reply = explainer.Explain(explainer_pb2.ExplainRequest(image=image, target_class=target))
            assert reply.predicted_class in KINDS and reply.explained_class == (target or reply.predicted_class)
            heat = np.frombuffer(reply.heatmap.float16_data, dtype="<f2")
            assert heat.size == IMAGE_SIZE * IMAGE_SIZE and np.isfinite(heat).all()
    finally:
        channel.close()
        server.stop(0)
