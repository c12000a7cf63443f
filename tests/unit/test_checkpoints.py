"""Resumable checkpoints: safetensors + JSON round trip, atomic epochs, and exact resumption of a fit."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from common.datasets.synthetic import generate_dataset
from services.trainer import checkpoints
from services.trainer.spec import parse_job_spec
from services.trainer.training import FitHooks, FitOptions, fit
from tests.service.trainer_support import one_torch_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _trained_pair() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    optimizer = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-3, "name": "a"},
                                  {"params": list(model[1].parameters()) + list(model[3].parameters()), "lr": 1e-2}])
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).sum().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_restores_tensors_optimizer_and_rng(tmp_path) -> None:
    model, optimizer = _trained_pair()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = checkpoints.capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt = checkpoints.Checkpoint(epoch=1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                  scheduler={"step": 7}, early_stopping={"best_epoch": 1}, history=[{"epoch": 1}],
                                  rng=rng, best_model=model.state_dict(), extra={"config_digest": "abc"})
    checkpoints.save(tmp_path, "job", ckpt)
    ckpt.epoch = 2
    folder = checkpoints.save(tmp_path, "job", ckpt)
    assert [p.name for p in (tmp_path / "job").iterdir()] == [folder.name] == ["epoch-0002"]  # older epoch gone
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]  # no pickle anywhere
    assert checkpoints.latest_epoch(tmp_path, "job") == 2

    loaded = checkpoints.load(tmp_path, "job")
    assert loaded is not None and loaded.epoch == 2 and loaded.scheduler == {"step": 7}
    assert loaded.history == [{"epoch": 1}] and loaded.extra["config_digest"] == "abc"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model[key], value) and torch.equal(loaded.best_model[key], value)
    fresh_model, fresh_opt = _trained_pair()
    fresh_opt.load_state_dict(loaded.optimizer)
    for a, b in zip(fresh_opt.state_dict()["state"].values(), optimizer.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert [g["lr"] for g in fresh_opt.param_groups] == [1e-3, 1e-2] and fresh_opt.param_groups[0]["name"] == "a"

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoints.restore_rng(loaded.rng)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

    checkpoints.remove(tmp_path, "job")
    assert checkpoints.load(tmp_path, "job") is None and checkpoints.latest_epoch(tmp_path, "job") == 0


def test_half_written_checkpoint_is_ignored(tmp_path) -> None:
    model, optimizer = _trained_pair()
    checkpoints.save(tmp_path, "job", checkpoints.Checkpoint(epoch=1, model=model.state_dict(),
                                                             optimizer=optimizer.state_dict()))
    (tmp_path / "job" / ".tmp-crashed").mkdir()  # a writer died before its rename
    (tmp_path / "job" / "epoch-0002").mkdir()  # no files: not a checkpoint
    assert checkpoints.load(tmp_path, "job").epoch == 1


class _Crash(Exception):
    pass


def _config(tmp_path, **recipe):
    root = tmp_path / "data" / "ds"
    if not root.exists():
        generate_dataset(root, train_per_class=10, test_per_class=2, size=32)
    spec = {"architecture": "test_resnet", "dataset_path": str(root), "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
            "freeze": {"mode": "FREEZE_MODE_PARTIAL"},
            "recipe": {"epochs": 3, "batch_size": 4, "image_size": 32, "lr": 3e-3, "head_lr": 1e-2, "augment": True,
                       "schedule": "SCHEDULE_COSINE", "warmup_epochs": 1, "early_stopping_patience": 5,
                       "precision": "PRECISION_FP32", "seed": "11", **recipe}}
    return parse_job_spec(spec, [tmp_path / "data"])


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path) -> None:
    config = _config(tmp_path)
    straight = fit(config, FitOptions(job_id="straight", checkpoint_root=tmp_path / "ck"))

    def crash_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise _Crash()

    with pytest.raises(_Crash):
        fit(config, FitOptions(job_id="resumed", checkpoint_root=tmp_path / "ck"),
            FitHooks(on_checkpoint=crash_after_first_epoch))
    torch.manual_seed(12345)  # whatever the process did meanwhile must not matter
    np.random.seed(54321)
    resumed = fit(config, FitOptions(job_id="resumed", checkpoint_root=tmp_path / "ck"))

    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch == 0
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert resumed.metrics["test"]["loss"] == pytest.approx(straight.metrics["test"]["loss"], abs=1e-6)
    assert resumed.cosine_to_initial == pytest.approx(straight.cosine_to_initial, abs=1e-9)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path) -> None:
    config = _config(tmp_path, epochs=2)

    def crash(epoch: int) -> None:
        raise _Crash()

    with pytest.raises(_Crash):
        fit(config, FitOptions(job_id="j", checkpoint_root=tmp_path / "ck"), FitHooks(on_checkpoint=crash))
    changed = _config(tmp_path, epochs=2, lr=1e-4)
    result = fit(changed, FitOptions(job_id="j", checkpoint_root=tmp_path / "ck"))
    assert result.resumed_from_epoch == 0 and len(result.history) == 2
