"""The fit loop and its parts: job specs, freeze policies over a job, learning rates, schedule, data, precision."""

from __future__ import annotations

import math

import pytest
import torch

from common.datasets.imagefolder import Augment
from common.datasets.synthetic import generate_dataset
from common.errors import InvalidArgument, NotFound, PermissionDenied
from common.models.zoo import build_model, get_spec
from services.trainer.augment import BatchAugmenter
from services.trainer.data import prepare_data
from services.trainer.optim import LrSchedule, build_optimizer
from services.trainer.runtime import resolve_runtime
from services.trainer.spec import RecipeConfig, parse_job_spec
from services.trainer.training import EarlyStopping, FitHooks, fit
from tests.service.trainer_support import one_torch_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "ds", train_per_class=8, test_per_class=2, size=32)
    return root


def _spec(data_root, **changes) -> dict:
    spec = {"architecture": "test_resnet", "dataset_path": str(data_root / "ds"),
            "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
            "recipe": {"epochs": 1, "batch_size": 4, "image_size": 32, "precision": "PRECISION_FP32"}}
    for key, value in changes.items():
        if key in ("recipe",):
            spec["recipe"] = {**spec["recipe"], **value}
        else:
            spec[key] = value
    return spec


# -- job specs -----------------------------------------------------------------------------------

def test_thesis_preset_is_the_thesis_recipe(data_root) -> None:
    config = parse_job_spec({"architecture": "resnet18", "dataset_path": "ds", "recipe": {"preset": "thesis"}},
                            [data_root])
    r = config.recipe
    assert (r.lr, r.head_lr, r.weight_decay, r.epochs, r.batch_size, r.val_fraction) == (2e-5, 2e-5, 2.5e-4, 6, 32, 0.1)
    assert r.image_size == 224 and r.schedule == "constant" and r.precision == "auto" and r.preset == "thesis"
    assert not r.augment and r.early_stopping_patience == 0 and r.class_balance == "none"
    assert config.operating_point.goal == "fixed"
    assert config.model_name == "resnet18" and config.freeze.describe() == "unfrozen"
    assert config.dataset_path == str((data_root / "ds").resolve()) and config.defect_class == "def_front"
    luna = parse_job_spec({"architecture": "luna", "dataset_path": "ds", "recipe": {"seed": "7", "preset": "thesis"}},
                          [data_root])
    assert luna.recipe.epochs == 50 and luna.recipe.image_size == 300 and luna.recipe.seed == 7
    assert luna.recipe.lr == luna.recipe.head_lr == 2e-5
    fraction = parse_job_spec(_spec(data_root, freeze={"fraction": 0.5}), [data_root])
    assert fraction.freeze.fraction == 0.5


def test_default_preset_decides_from_the_data_and_takes_overrides(data_root) -> None:
    config = parse_job_spec({"architecture": "resnet18", "dataset_path": "ds"}, [data_root])
    r = config.recipe
    assert r.preset == "default" and (r.lr, r.head_lr) == (2e-4, 1e-3) and r.schedule == "cosine"
    assert r.augment and r.class_balance == "auto" and r.early_stopping_patience == 10  # a third of 30 epochs
    # 14 training images: the images-seen budget asks for the most epochs; 32 px images: the smallest size
    assert r.epochs == 30 and r.image_size == 64 and "median short side 32" in r.decided_from_data["image_size"]
    assert 0.25 <= r.warmup_epochs <= 2.0
    assert config.operating_point.goal == "recall" and config.operating_point.target_recall == 0.99
    assert config.gate.on_fail == "fail" and config.gate.min_balanced_accuracy_margin == 0.25
    overridden = parse_job_spec({"architecture": "resnet18", "dataset_path": "ds", "recipe": {
        "epochs": 2, "image_size": 48, "augment": False, "early_stopping_patience": 0, "warmup_epochs": 0,
        "schedule": "SCHEDULE_CONSTANT", "class_balance": "CLASS_BALANCE_NONE"},
        "operating_point": {"goal": "THRESHOLD_GOAL_COST", "cost_ratio": 5},
        "gate": {"on_fail": "GATE_ACTION_PUBLISH_WITHOUT_ALIASES"}}, [data_root])
    o = overridden.recipe
    assert (o.epochs, o.image_size, o.augment, o.early_stopping_patience, o.warmup_epochs) == (2, 48, False, 0, 0.0)
    assert o.schedule == "constant" and o.class_balance == "none" and o.decided_from_data == {}
    assert overridden.operating_point.goal == "cost" and overridden.operating_point.cost_ratio == 5
    assert overridden.gate.on_fail == "publish_without_aliases"
    # a network trained from scratch: the backbone at the head's rate
    luna = parse_job_spec({"architecture": "luna", "dataset_path": "ds"}, [data_root])
    assert luna.recipe.lr == luna.recipe.head_lr == 1e-3


def test_enum_words_come_from_the_proto_descriptors() -> None:
    from protos.zdm.v1 import trainer_pb2
    from services.trainer.spec import enum_words

    words = enum_words(trainer_pb2.ThresholdGoal, "THRESHOLD_GOAL_")
    assert words["THRESHOLD_GOAL_BALANCED_ACCURACY"] == "balanced_accuracy"
    assert set(words) == set(trainer_pb2.ThresholdGoal.keys())


@pytest.mark.parametrize(("changes", "error", "text"), [
    ({"architecture": "nonsense-net"}, InvalidArgument, "valid: luna, alexnet"),
    ({"architecture": ""}, InvalidArgument, "architecture is required"),
    ({"recipe": {"lr": -1}}, InvalidArgument, "recipe.lr"),
    ({"recipe": {"lr": 2.0}}, InvalidArgument, "recipe.lr"),
    ({"recipe": {"head_lr": 0.0}}, InvalidArgument, "recipe.head_lr"),
    ({"recipe": {"lr": "NaN"}}, InvalidArgument, "finite"),
    ({"recipe": {"epochs": 1001}}, InvalidArgument, "recipe.epochs"),
    ({"recipe": {"batch_size": 5000}}, InvalidArgument, "recipe.batch_size"),
    ({"recipe": {"val_fraction": 0.0}}, InvalidArgument, "val_fraction"),
    ({"recipe": {"val_fraction": 0.6}}, InvalidArgument, "val_fraction"),
    ({"recipe": {"weight_decay": 3}}, InvalidArgument, "weight_decay"),
    ({"recipe": {"warmup_epochs": 4}}, InvalidArgument, "warmup_epochs"),
    ({"recipe": {"image_size": 4}}, InvalidArgument, "image_size"),
    ({"recipe": {"devices": 99}}, InvalidArgument, "recipe.devices=99"),
    ({"recipe": {"schedule": "SCHEDULE_SAWTOOTH"}}, InvalidArgument, "recipe.schedule"),
    ({"recipe": {"preset": "fastest"}}, InvalidArgument, "valid: default, thesis"),
    ({"recipe": {"class_balance": "CLASS_BALANCE_MAYBE"}}, InvalidArgument, "recipe.class_balance"),
    ({"operating_point": {"target_recall": 1.5}}, InvalidArgument, "operating_point.target_recall"),
    ({"operating_point": {"goal": 9}}, InvalidArgument, "operating_point.goal"),
    ({"gate": {"min_balanced_accuracy_margin": 0.9}}, InvalidArgument, "gate.min_balanced_accuracy_margin"),
    ({"freeze": {"fraction": 1.5}}, InvalidArgument, "freeze.fraction"),
    ({"freeze": {"prefixes": {"prefixes": [""]}}}, InvalidArgument, "freeze.prefixes"),
    ({"model_name": "a/b"}, InvalidArgument, "model name"),
    ({"publish_aliases": ["bad alias"]}, InvalidArgument, "alias"),
    ({"weights": {"kind": "WEIGHTS_KIND_NAMED", "location": "imagenet-please"}}, InvalidArgument, "named source"),
    ({"weights": {"kind": "WEIGHTS_KIND_FILE"}}, InvalidArgument, "weights.location"),
    ({"weights": {"kind": "WEIGHTS_KIND_FILE", "location": "/etc/passwd"}}, PermissionDenied, "outside"),
    ({"dataset_path": "/etc"}, PermissionDenied, "outside"),
    ({"dataset_path": "missing"}, NotFound, "does not exist"),
    ({"dataset_path": ""}, InvalidArgument, "dataset_path is required"),
    ({"defect_class": "scratch"}, InvalidArgument, "defect_class"),
])
def test_bad_specs_are_rejected_with_clear_messages(data_root, changes, error, text) -> None:
    with pytest.raises(error) as err:
        parse_job_spec(_spec(data_root, **changes), [data_root])
    assert text in err.value.message


# -- freeze policies over a job ----------------------------------------------------------------

def test_freeze_policies_report_trainable_params_and_keep_frozen_parts(data_root) -> None:
    spec = get_spec("test_resnet")
    model = build_model("test_resnet", 2, image_size=32)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.fc.parameters())
    reports = {}
    for label, freeze in {"frozen": {"mode": "FREEZE_MODE_FROZEN"}, "partial": {"mode": "FREEZE_MODE_PARTIAL"},
                          "unfrozen": {"mode": "FREEZE_MODE_UNFROZEN"}, "fraction1": {"fraction": 1.0},
                          "stem": {"prefixes": {"prefixes": ["conv1", "bn1"]}}}.items():
        config = parse_job_spec(_spec(data_root, freeze=freeze, recipe={"lr": 1e-2, "max_batches_per_epoch": 2}),
                                [data_root])
        starts = {}
        result = fit(config, hooks=FitHooks(on_start=lambda info, s=starts: s.update(info=info)))
        reports[label] = result
        assert starts["info"].trainable_params == result.freeze.trainable
        assert result.freeze.total == total
        if label == "frozen":  # the backbone, BatchNorm statistics included, is exactly the initial one
            torch.manual_seed(config.recipe.seed)
            initial = build_model("test_resnet", 2, image_size=32).state_dict()
            trained = result.model.state_dict()
            backbone = [k for k in initial if not k.startswith(spec.head_prefixes)]
            assert all(torch.equal(initial[k], trained[k]) for k in backbone)
            assert not torch.equal(initial["fc.weight"], trained["fc.weight"])
    assert reports["frozen"].freeze.trainable == reports["fraction1"].freeze.trainable == head
    assert head < reports["partial"].freeze.trainable < reports["unfrozen"].freeze.trainable == total
    assert reports["stem"].freeze.trainable == total - sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("conv1", "bn1")))
    assert reports["frozen"].cosine_to_initial > reports["unfrozen"].cosine_to_initial


# -- optimisation -----------------------------------------------------------------------------

def test_param_groups_give_head_backbone_and_layer_groups_their_own_lr() -> None:
    arch = get_spec("test_resnet")
    model = build_model("test_resnet", 2)
    recipe = RecipeConfig(lr=1e-5, head_lr=1e-3, group_lr={"layer4": 1e-4, "layer4.0.conv1": 5e-4})
    groups = {g["name"]: g for g in build_optimizer(model, arch, recipe).param_groups}
    assert groups["head"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-5
    assert groups["group:layer4"]["lr"] == 1e-4 and groups["group:layer4.0.conv1"]["lr"] == 5e-4
    by_id = {id(p): name for name, g in groups.items() for p in g["params"]}
    assert by_id[id(model.layer4[0].conv1.weight)] == "group:layer4.0.conv1"  # longest prefix wins
    assert by_id[id(model.layer4[0].conv2.weight)] == "group:layer4"
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    with pytest.raises(InvalidArgument, match="matches no parameter"):
        build_optimizer(model, arch, RecipeConfig(group_lr={"layer9": 1e-3}))
    with pytest.raises(InvalidArgument, match="head_lr"):
        build_optimizer(model, arch, RecipeConfig(group_lr={"fc": 1e-3}))


def test_schedule_warms_up_then_decays_with_a_cosine() -> None:
    opt = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1, "base_lr": 0.1}])
    sched = LrSchedule(opt, "cosine", total_steps=10, warmup_steps=2)
    lrs = [sched.lr]
    for _ in range(9):
        sched.step()
        lrs.append(sched.lr)
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False)) and lrs[-1] < 0.01
    assert lrs[5] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))
    state = sched.state_dict()
    again = LrSchedule(opt, "cosine", total_steps=10, warmup_steps=2)
    again.load_state_dict(state)
    assert again.lr == pytest.approx(lrs[-1])
    constant = LrSchedule(opt, "constant", total_steps=10, warmup_steps=0)
    assert constant.lr == 0.1


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience() -> None:
    model = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(patience=2)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6], start=1):
        if epoch == 2:
            best = {k: v.clone() for k, v in model.state_dict().items()}
        stopper.update(epoch, loss, model)
        with torch.no_grad():
            model.weight.add_(1.0)
    assert stopper.stopped and stopper.best_epoch == 2
    assert torch.equal(stopper.best_state["weight"], best["weight"])


# -- data and precision -------------------------------------------------------------------------

def test_in_memory_and_streamed_data_agree(data_root, tmp_path) -> None:
    kwargs = dict(image_size=32, batch_size=4, val_fraction=0.25, seed=3, augment=False, loader_workers=0,
                  cache_dir=tmp_path)
    memory = prepare_data(data_root / "ds", **kwargs)
    streamed = prepare_data(data_root / "ds", **kwargs, in_memory_bytes=0)
    assert memory.in_memory and not streamed.in_memory and memory.mean == streamed.mean
    for a, b in zip(memory.val.batches(0, False), streamed.val.batches(0, False), strict=True):
        assert torch.allclose(a[0], b[0], atol=1e-6) and torch.equal(a[1], b[1])
    first = [y for _, y in memory.train.batches(1, True)]
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in memory.train.batches(1, True)], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, [y for _, y in memory.train.batches(2, True)], strict=True))
    assert memory.counts == {"train": 12, "val": 4, "test": 4}


def test_batch_augmenter_is_seeded_and_stays_in_the_pixel_range() -> None:
    mean, std = [0.4] * 3, [0.2] * 3
    aug = BatchAugmenter(Augment(), mean, std)
    x = (torch.rand(6, 3, 8, 8) - 0.4) / 0.2
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert a.min() >= -0.4 / 0.2 - 1e-5 and a.max() <= 0.6 / 0.2 + 1e-5
    flips_only = BatchAugmenter(Augment(brightness=0, contrast=0, rot90=False, vflip=False), mean, std)
    out = flips_only(x, torch.Generator().manual_seed(2))
    for i in range(6):  # each image is either itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_precision_choices_on_cpu(data_root) -> None:
    arch = get_spec("test_resnet")
    assert resolve_runtime("bf16", arch, 224, "cpu").autocast_dtype is torch.bfloat16
    assert resolve_runtime("fp32", arch, 224, "cpu").autocast_dtype is None
    assert not resolve_runtime("auto", arch, 32, "cpu").channels_last  # tiny inputs: the layout costs more
    assert not resolve_runtime("auto", get_spec("test_vit"), 224, "cpu").channels_last  # no convolutions to speed up
    config = parse_job_spec(_spec(data_root, recipe={"precision": "PRECISION_BF16", "max_batches_per_epoch": 1}),
                            [data_root])
    result = fit(config)
    assert result.runtime == "cpu bf16" and math.isfinite(result.metrics["val"]["loss"])
    assert all(v.dtype == torch.float32 for v in result.state_dict().values() if v.is_floating_point())


def test_uneven_classes_train_with_class_weights_and_report_the_operating_point(tmp_path) -> None:
    from common.datasets.synthetic import Hardness
    from services.trainer.publish import build_manifest

    generate_dataset(tmp_path / "uneven", train_per_class=12, test_per_class=5, size=32,
                     hardness=Hardness(defect_share=0.25))
    spec = {"architecture": "test_resnet", "dataset_path": "uneven", "weights": {"kind": "WEIGHTS_KIND_RANDOM"},
            "recipe": {"epochs": 1, "image_size": 32, "batch_size": 8, "val_fraction": 0.25}}
    config = parse_job_spec(spec, [tmp_path])
    result = fit(config)
    assert result.class_counts == [4, 14] and result.class_weights == pytest.approx([18 / 8, 18 / 28])
    assert {"train", "val", "val@op", "test", "test@0.5", "test@op"} <= set(result.metrics)
    point = result.operating_point
    assert point["goal"] == "recall" and point["recall"] >= 0.99 and point["curve"]
    assert result.metrics["test@op"]["threshold"] == point["threshold"]
    manifest = build_manifest(config, result, "job-1")
    assert manifest.preset == "default" and manifest.decision_threshold == point["threshold"]
    assert manifest.recipe["loss"] == "class_weighted_cross_entropy" and manifest.recipe["class_weights"]
    plain = fit(parse_job_spec({**spec, "recipe": {**spec["recipe"], "class_balance": "CLASS_BALANCE_NONE"}},
                               [tmp_path]))
    assert plain.class_weights is None
