"""EvaluateDataset and SearchDefaults over a real gRPC channel, against independent recomputations; also the
newer methods and options over Explain, the threshold-free scores and the held-out search."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import torch
from torch import nn

from common.datasets.synthetic import generate_dataset
from common.manifest import Manifest, Preprocessing
from common.models import zoo
from common.overlap import centred_disc, overlap
from common.registry import Registry
from common.settings import CommonSettings, ExplainerSettings
from protos.zdm.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc
from services.explainer import heatmap as hm
from services.explainer import method_names
from services.explainer.__main__ import build
from services.explainer.annotated import find_annotated
from services.explainer.evaluate import SIZE_BUCKETS
from services.explainer.model_store import LoadedModel
from services.explainer.search import search_defaults, split_dataset, threshold_sweep
from tests.service.classifier_support import publish, random_state

THRESHOLD = 0.3
# Batched and single forwards may differ in the last float bits and so flip a pixel that lies exactly at the
# threshold: allow about one pixel's worth. (On the development machine they agree exactly.)
TOL = 2e-3
CRAFTED = "test_crafted"
CRAFTED_SIZE = 32
# (x, y, side) of the bright square in each crafted image; the mask is the square.
SQUARES = [(2, 3, 6), (20, 4, 8), (5, 18, 10), (14, 14, 12), (24, 24, 7)]


class Crafted(nn.Module):
    """Three branches whose Grad-CAM is known: ``sharp`` marks the bright square exactly, ``inverse``
    the background, ``flat`` nothing in particular (a constant map). Logit 0 sums their means."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.sharp = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.inverse = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.flat = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.head = nn.Linear(3, num_classes)
        with torch.no_grad():
            for branch, weight, bias in ((self.sharp, 1 / 3, 0.0), (self.inverse, -1 / 3, 0.0), (self.flat, 0.0, 1.0)):
                branch[0].weight.fill_(weight)
                branch[0].bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.stack([b(x).mean(dim=(1, 2, 3)) for b in (self.sharp, self.inverse, self.flat)], dim=1)
        return self.head(features)


def _crafted_head(model: Crafted) -> Crafted:
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0].fill_(1.0)
        model.head.bias.zero_()
    return model


@pytest.fixture
def crafted_arch(monkeypatch):
    spec = zoo.ArchSpec(key=CRAFTED, build=lambda n, pretrained, size: Crafted(n), head_prefixes=("head",),
                        input_size=CRAFTED_SIZE, explanation=zoo._gradcam("flat", 0.5), default_weights="random",
                        cam_candidates=lambda m: ["flat", "inverse", "sharp"])
    monkeypatch.setitem(zoo.ZOO, CRAFTED, spec)
    return spec


def publish_crafted(registry: Registry) -> Manifest:
    manifest = Manifest(name="crafted", architecture=CRAFTED, classes=["def_front", "ok_front"],
                        defect_class="def_front",
                        preprocessing=Preprocessing(image_size=CRAFTED_SIZE, mean=[0.5] * 3, std=[0.5] * 3),
                        explanation=zoo._gradcam("flat", 0.5))
    return registry.publish(manifest, _crafted_head(Crafted()).state_dict())


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    synthetic = generate_dataset(data / "syn", train_per_class=1, test_per_class=5, size=64, seed=5)
    crafted = data / "crafted"
    (crafted / "images").mkdir(parents=True)
    (crafted / "masks").mkdir()
    for i, (x, y, side) in enumerate(SQUARES):
        image = np.zeros((CRAFTED_SIZE, CRAFTED_SIZE), np.uint8)
        image[y:y + side, x:x + side] = 255
        (crafted / "images" / f"sq_{i}.png").write_bytes(png(image))
        (crafted / "masks" / f"sq_{i}.png").write_bytes(png(image))
    (data / "empty").mkdir()
    (tmp_path / "outside").mkdir()
    return {"data": data, "syn": synthetic, "crafted": crafted, "tmp": tmp_path}


@pytest.fixture
def service(roots):
    settings = ExplainerSettings(port=0, batch_size=4, output_root=roots["tmp"] / "reports",
                                 common=CommonSettings(registry=roots["tmp"] / "registry", data_roots=[roots["data"]]))
    server, servicer = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield explainer_pb2_grpc.ExplainerStub(channel), Registry(settings.common.registry)
    channel.close()
    server.stop(0)


def _events(stream) -> tuple[list, object]:
    events = list(stream)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] in ("summary", "result") and all(k == "progress" for k in kinds[:-1])
    last = events[-1]
    return [e.progress for e in events[:-1]], getattr(last, kinds[-1])


def _by_hand(stub, image: Path, mask: Path, ref: common_pb2.ModelRef) -> dict[str, float]:
    """One Explain call; the overlap recomputed here from the returned binary mask."""
    reply = stub.Explain(explainer_pb2.ExplainRequest(
        image=common_pb2.Image(data=image.read_bytes()), model=ref, threshold=THRESHOLD,
        mask=common_pb2.Mask(data=mask.read_bytes(), format=common_pb2.MASK_FORMAT_BINARY_PNG)))
    gt = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 0
    pred = np.frombuffer(reply.mask, np.uint8).reshape(gt.shape).astype(bool)
    inter, union = int((pred & gt).sum()), int((pred | gt).sum())
    return {"inter": inter, "union": union, "pred": int(pred.sum()), "gt": int(gt.sum()), "pixels": gt.size,
            "iou": inter / union, "iop": inter / pred.sum() if pred.sum() else 0.0, "iogt": inter / gt.sum(),
            "pointing": float(reply.scores.pointing_hit)}


def test_evaluate_two_models_matches_per_image_explain(service, roots) -> None:
    stub, registry = service
    for name, seed in (("frozen", 0), ("unfrozen", 1)):
        publish(registry, name, random_state(seed))
    refs = [common_pb2.ModelRef(name="frozen"), common_pb2.ModelRef(name="unfrozen", version=1)]
    syn = roots["syn"]
    progress, summary = _events(stub.EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(
        images_path=str(syn / "test"), masks_path=str(syn / "masks" / "test"), models=refs, threshold=THRESHOLD,
        batch_size=2, output_dir="run1")))

    pairs = sorted((syn / "test" / "def_front").glob("*.png"))
    assert len(progress) == 2 * 3  # two models x three batches of <= 2 images
    assert progress[-1].done == progress[-1].total == len(pairs)
    assert summary.csv_path.startswith(str(roots["tmp"] / "reports" / "run1"))
    assert "skipped: 5 without a mask file" in summary.table_markdown  # the ok_front images

    gts = [cv2.imread(str(syn / "masks" / "test" / "def_front" / p.name), cv2.IMREAD_GRAYSCALE) > 0 for p in pairs]
    for ref, evaluation in zip(refs, summary.models, strict=True):
        assert evaluation.model.name == ref.name and evaluation.model.version == 1
        assert evaluation.threshold == pytest.approx(THRESHOLD) and evaluation.layer and evaluation.method == "gradcam"
        hand = [_by_hand(stub, p, syn / "masks" / "test" / "def_front" / p.name, ref) for p in pairs]
        overall = evaluation.overall
        assert overall.images == len(pairs)
        for key in ("iou", "iop", "iogt"):
            assert getattr(overall.mean, key) == pytest.approx(np.mean([h[key] for h in hand]), abs=TOL)
        assert overall.pooled.iou == pytest.approx(sum(h["inter"] for h in hand) / sum(h["union"] for h in hand), abs=TOL)
        assert overall.pooled.iop == pytest.approx(sum(h["inter"] for h in hand) / max(1, sum(h["pred"] for h in hand)),
                                                   abs=TOL)
        assert overall.pooled.iogt == pytest.approx(sum(h["inter"] for h in hand) / sum(h["gt"] for h in hand), abs=TOL)
        assert overall.pointing_game == pytest.approx(np.mean([h["pointing"] for h in hand]))
        areas = [h["gt"] / h["pixels"] for h in hand]
        assert overall.mean.mask_area == pytest.approx(np.mean(areas))
        labels = {b.label for b in SIZE_BUCKETS}
        assert set(evaluation.by_mask_size) <= labels
        assert sum(s.images for s in evaluation.by_mask_size.values()) == len(pairs)
        beats = (overall.mean.iou > summary.whole_image_baseline.mean.iou
                 and overall.mean.iou > summary.centred_disc_baseline.mean.iou
                 and overall.pointing_game > summary.pointing_chance)
        assert evaluation.beats_baselines == beats

    # whole-image baseline: IoU = IoP = mask area, IoGT = 1
    assert summary.whole_image_baseline.mean.iou == pytest.approx(np.mean([g.mean() for g in gts]))
    assert summary.whole_image_baseline.mean.iogt == pytest.approx(1.0)
    assert summary.pointing_chance == pytest.approx(np.mean([g.mean() for g in gts]))

    with open(summary.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(pairs)
    assert {r["model"] for r in rows} == {"frozen", "unfrozen"}
    assert {"image", "version", "iou", "iop", "iogt", "pointing", "pred_area", "mask_area", "predicted_class",
            "probability"} <= set(rows[0])
    assert not list(Path(summary.csv_path).parent.glob("*.partial"))
    assert len(summary.chart_paths) >= 3
    for chart in summary.chart_paths:
        image = cv2.imread(chart, cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 100 and image.std() > 5
    assert "frozen v1" in summary.table_markdown and "*whole image*" in summary.table_markdown


def test_baselines_on_crafted_masks_and_box_masks(service, roots) -> None:
    stub, registry = service
    publish(registry, "m", random_state(0))
    crafted = roots["crafted"]
    # one more annotated image with a YOLO box: the centred 16 x 16 square (a quarter of the image)
    (crafted / "images" / "yolo.png").write_bytes(png(np.full((CRAFTED_SIZE, CRAFTED_SIZE), 90, np.uint8)))
    (crafted / "masks" / "yolo.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (crafted / "images" / "blank.png").write_bytes(png(np.zeros((CRAFTED_SIZE, CRAFTED_SIZE), np.uint8)))
    (crafted / "masks" / "blank.txt").write_text("")  # an empty YOLO label: skipped and counted
    _, summary = _events(stub.EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(
        images_path="crafted/images", masks_path="crafted/masks", output_dir=str(roots["data"] / "reports"))))

    areas = [side * side / CRAFTED_SIZE**2 for _, _, side in SQUARES] + [0.25]
    sides = [side for _, _, side in SQUARES] + [16]
    assert summary.models[0].overall.images == len(areas)
    assert "1 whose mask marks no defect" in summary.table_markdown
    whole = summary.whole_image_baseline
    assert whole.mean.iou == pytest.approx(np.mean(areas)) and whole.mean.iop == pytest.approx(np.mean(areas))
    assert whole.mean.iogt == pytest.approx(1.0)
    assert whole.pooled.iou == pytest.approx(sum(s * s for s in sides) / (len(sides) * CRAFTED_SIZE**2))
    assert summary.pointing_chance == pytest.approx(np.mean(areas))
    # the disc: pixel centres within sqrt(mean area * H * W / pi) of the image centre
    radius2 = np.mean(areas) * CRAFTED_SIZE**2 / np.pi
    yy, xx = np.mgrid[:CRAFTED_SIZE, :CRAFTED_SIZE] + 0.5 - CRAFTED_SIZE / 2
    disc = yy**2 + xx**2 <= radius2
    gts = []
    for x, y, side in SQUARES:
        gt = np.zeros((CRAFTED_SIZE, CRAFTED_SIZE), bool)
        gt[y:y + side, x:x + side] = True
        gts.append(gt)
    gts.append(np.pad(np.ones((16, 16), bool), 8))
    disc_ious = [(disc & g).sum() / (disc | g).sum() for g in gts]
    assert summary.centred_disc_baseline.mean.iou == pytest.approx(np.mean(disc_ious))
    assert np.array_equal(centred_disc(CRAFTED_SIZE, CRAFTED_SIZE, float(np.mean(areas))), disc)
    # the 12 px square (14 %) and the quarter box are medium, the others small (< 10 %)
    assert set(summary.models[0].by_mask_size) == {"small <10%", "medium 10-50%"}
    assert summary.models[0].by_mask_size["medium 10-50%"].images == 2


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_bad_dataset_requests(service, roots) -> None:
    stub, registry = service
    publish(registry, "m", random_state(0))
    syn, tmp = roots["syn"], roots["tmp"]

    def evaluate(**fields):
        return lambda: list(stub.EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(**fields)))

    good = {"images_path": str(syn / "test"), "masks_path": str(syn / "masks" / "test")}
    cases = [
        ({**good, "images_path": str(tmp / "outside")}, grpc.StatusCode.PERMISSION_DENIED, "outside"),
        ({**good, "masks_path": "/etc"}, grpc.StatusCode.PERMISSION_DENIED, "outside"),
        ({**good, "images_path": str(roots["data"] / "missing")}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ({**good, "masks_path": str(roots["data"] / "empty")}, grpc.StatusCode.INVALID_ARGUMENT, "no image"),
        ({**good, "output_dir": str(tmp / "outside" / "report")}, grpc.StatusCode.PERMISSION_DENIED, "output_dir"),
        ({**good, "output_dir": "../../escape"}, grpc.StatusCode.PERMISSION_DENIED, "output_dir"),
        ({**good, "models": [common_pb2.ModelRef(name="ghost")]}, grpc.StatusCode.NOT_FOUND, "ghost"),
        ({**good, "layer": "no.such.layer"}, grpc.StatusCode.INVALID_ARGUMENT, "layer"),
        ({"masks_path": good["masks_path"]}, grpc.StatusCode.INVALID_ARGUMENT, "images_path"),
    ]
    for fields, expected, words in cases:
        code, details = _code(evaluate(**fields))
        assert code == expected, (fields, details)
        assert words in details, details
    assert not (tmp / "outside" / "report").exists()
    code, details = _code(lambda: list(stub.SearchDefaults(explainer_pb2.SearchDefaultsRequest(
        **good, thresholds=[0.5, 1.5]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "thresholds" in details


def test_threshold_sweep_equals_thresholding_each_time() -> None:
    rng = np.random.default_rng(0)
    heat = rng.random((23, 31)).astype(np.float32)
    heat[3, 4] = np.float32(0.3)  # a value exactly at a threshold: strictly above does not count
    gt = rng.random((23, 31)) < 0.2
    thresholds = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]
    iou, area = threshold_sweep(heat, gt, np.array(thresholds))
    for k, t in enumerate(thresholds):
        expected = overlap(hm.threshold(torch.from_numpy(heat), t).numpy(), gt)
        assert iou[k] == pytest.approx(expected.iou, abs=1e-12)
        assert area[k] == pytest.approx(expected.pred_area, abs=1e-12)


def test_search_picks_the_localising_layer_and_stores_it(service, roots, crafted_arch) -> None:
    stub, registry = service
    manifest = publish_crafted(registry)
    ref = common_pb2.ModelRef(name=manifest.name)
    crafted = roots["crafted"]
    image = (crafted / "images" / "sq_3.png").read_bytes()
    before = stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=ref))
    assert before.layer == "flat"  # loaded and cached with the published defaults

    progress, result = _events(stub.SearchDefaults(explainer_pb2.SearchDefaultsRequest(
        model=ref, images_path=str(crafted / "images"), masks_path=str(crafted / "masks"), store=True,
        holdout_fraction=0)))  # every image in the search: the figures below are over all of them
    assert progress[-1].done == progress[-1].total == len(SQUARES)
    assert len(result.candidates) == 3 * 9  # the architecture's three candidates x 0.1 .. 0.9
    whole = np.mean([side * side / CRAFTED_SIZE**2 for _, _, side in SQUARES])
    by_layer = {}
    for c in result.candidates:
        by_layer.setdefault(c.layer, []).append(c)
        assert c.score == pytest.approx(c.mean_iou - whole, abs=1e-6)
    assert all(c.score == pytest.approx(0.0, abs=1e-6) and c.predicted_area == pytest.approx(1.0)
               for c in by_layer["flat"])  # marks everything: exactly the whole-image baseline
    assert all(c.score < 0 for c in by_layer["inverse"])  # marks the background
    assert all(c.mean_iou == pytest.approx(1.0) for c in by_layer["sharp"])
    assert result.best.layer == "sharp" and result.best.score == pytest.approx(1.0 - whole, abs=1e-6)
    assert result.stored

    stored = registry.manifest(manifest.name, manifest.version).explanation
    assert (stored.layer, stored.method) == ("sharp", "gradcam")
    assert stored.threshold == pytest.approx(result.best.threshold)
    after = stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=ref))
    assert after.layer == "sharp" and after.threshold == pytest.approx(result.best.threshold)  # cache refreshed

    # a search restricted to layers that cannot beat the whole image stores nothing
    _, result = _events(stub.SearchDefaults(explainer_pb2.SearchDefaultsRequest(
        model=ref, images_path=str(crafted / "images"), masks_path=str(crafted / "masks"), store=True,
        layers=["flat", "inverse"], thresholds=[0.2, 0.6], holdout_fraction=0)))
    assert len(result.candidates) == 4 and not result.stored and result.best.score <= 0
    assert registry.manifest(manifest.name, manifest.version).explanation.layer == "sharp"


def test_search_over_regions_stores_the_winning_region(service, roots, crafted_arch) -> None:
    stub, registry = service
    manifest = publish_crafted(registry)
    ref = common_pb2.ModelRef(name=manifest.name)
    crafted = roots["crafted"]
    request = explainer_pb2.SearchDefaultsRequest(
        model=ref, images_path=str(crafted / "images"), masks_path=str(crafted / "masks"), store=True,
        layers=["sharp"], thresholds=[0.5], regions=["peak", "all", "peak"], holdout_fraction=0)
    progress, result = _events(stub.SearchDefaults(request))
    assert progress[-1].done == progress[-1].total == len(SQUARES)  # one pass over the images for both regions
    assert [c.region for c in result.candidates] == ["peak", "all"]
    assert all(c.mean_iou == pytest.approx(1.0) for c in result.candidates)  # one square per image: a tie
    assert result.best.region == "peak" and result.stored  # ties go to the earlier region
    assert registry.manifest(manifest.name, manifest.version).explanation.region == "peak"
    image = (crafted / "images" / "sq_3.png").read_bytes()
    assert stub.Explain(explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=ref)).region == "peak"
    summary = _events(stub.EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(
        models=[ref], images_path=str(crafted / "images"), masks_path=str(crafted / "masks"), region="all")))[1]
    assert summary.models[0].region == "all"
    del request.regions[:]
    request.regions.append("largest")
    code, details = _code(lambda: list(stub.SearchDefaults(request)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "peak" in details


def test_search_objective_leaves_out_large_masks_and_searches_peak_regions(roots, crafted_arch) -> None:
    crafted = roots["crafted"]
    big = np.zeros((CRAFTED_SIZE, CRAFTED_SIZE), np.uint8)
    big[:, 4:] = 255  # 87.5 % of the image: out of the objective
    (crafted / "images" / "big.png").write_bytes(png(big))
    (crafted / "masks" / "big.png").write_bytes(png(big))
    model = _crafted_head(Crafted())
    manifest = Manifest(name="crafted", version=1, architecture=CRAFTED, classes=["def_front", "ok_front"],
                        defect_class="def_front",
                        preprocessing=Preprocessing(image_size=CRAFTED_SIZE, mean=[0.5] * 3, std=[0.5] * 3),
                        explanation=zoo._gradcam("flat", 0.5))
    loaded = LoadedModel(manifest, crafted_arch, model.eval())
    dataset = find_annotated(crafted / "images", crafted / "masks")
    *_, together_all, together_peak = search_defaults(loaded, dataset, regions=["all", "peak"], layers=["flat", "sharp"],
                                                      thresholds=[0.3, 0.7])
    for region, together in (("all", together_all), ("peak", together_peak)):
        *_, outcome = search_defaults(loaded, dataset, regions=[region], layers=["flat", "sharp"], thresholds=[0.3, 0.7])
        assert together == outcome  # one heatmap pass for both regions scores each as a search of its own
        assert outcome.images == len(SQUARES) + 1 and outcome.objective_images == len(SQUARES)
        whole = np.mean([side * side / CRAFTED_SIZE**2 for _, _, side in SQUARES])
        assert outcome.whole_image_iou == pytest.approx(whole)
        assert (outcome.best.layer, outcome.region) == ("sharp", region)
        assert outcome.best.mean_iou == pytest.approx(1.0)  # each crafted image has one square: peak keeps it all


# --- issue 13: new methods and options, threshold-free scores, the held-out search -------------------


def _request_paths(roots) -> dict[str, str]:
    crafted = roots["crafted"]
    return {"images_path": str(crafted / "images"), "masks_path": str(crafted / "masks")}


def test_new_methods_tiles_and_threshold_free_scores_over_grpc(service, roots, crafted_arch) -> None:
    stub, registry = service
    manifest = publish_crafted(registry)
    ref = common_pb2.ModelRef(name=manifest.name)
    crafted = roots["crafted"]
    image = (crafted / "images" / "sq_3.png").read_bytes()
    mask = common_pb2.Mask(data=(crafted / "masks" / "sq_3.png").read_bytes())
    for method, layer in ((explainer_pb2.METHOD_LAYERCAM, "sharp"), (explainer_pb2.METHOD_HIRESCAM, "sharp+flat:0"),
                          (explainer_pb2.METHOD_GRAD_X_INPUT, ""), (explainer_pb2.METHOD_INTEGRATED_GRADIENTS, "")):
        request = explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=ref, method=method,
                                               layer=layer, threshold=0.5, mask=mask,
                                               gradients=explainer_pb2.GradientOptions(steps=4, smooth_samples=2))
        reply = stub.Explain(request)
        assert reply.method == method and reply.layer == layer
        s = reply.scores
        if layer:
            assert s.pointing_hit and s.energy > 0.9 and s.pixel_auc > 0.9, (method, s)
        else:  # on this model |input x gradient| is the same inside and outside the square: chance level
            assert s.energy == pytest.approx(s.mask_area, abs=0.02) and s.pixel_auc == pytest.approx(0.5, abs=0.02)
        assert s.best_f1 >= max(s.iou, 2 * s.iou / (1 + s.iou)) - 1e-9  # F1 of the served threshold at most
        request.tiles.CopyFrom(explainer_pb2.TileOptions(enabled=True, tile_size=16, overlap=0.5))
        tiled = stub.Explain(request)
        assert len(tiled.heatmap.float16_data) == 2 * CRAFTED_SIZE**2
        assert tiled.scores.energy > 0.5 or not layer
    bad = explainer_pb2.ExplainRequest(image=common_pb2.Image(data=image), model=ref,
                                       method=explainer_pb2.METHOD_ATTENTION, layer="1")
    with pytest.raises(Exception, match="no attention maps"):
        stub.Explain(bad)

    _, summary = _events(stub.EvaluateDataset(explainer_pb2.EvaluateDatasetRequest(
        models=[ref], layer="sharp", threshold=0.5, **_request_paths(roots))))
    areas = [side * side / CRAFTED_SIZE**2 for _, _, side in SQUARES]
    assert summary.energy_chance == pytest.approx(np.mean(areas))
    assert summary.pixel_auc_chance == 0.5
    assert summary.best_f1_chance == pytest.approx(np.mean([2 * a / (1 + a) for a in areas]))
    overall = summary.models[0].overall
    assert overall.mean_energy == pytest.approx(1.0) and overall.mean_pixel_auc == pytest.approx(1.0)
    assert overall.mean_best_f1 == pytest.approx(1.0)
    assert "pixel AUC" in summary.table_markdown and "*chance*" in summary.table_markdown


def test_search_over_methods_and_fusions_holds_out_half_by_default(service, roots, crafted_arch) -> None:
    stub, registry = service
    manifest = publish_crafted(registry)
    ref = common_pb2.ModelRef(name=manifest.name)
    request = explainer_pb2.SearchDefaultsRequest(
        model=ref, layers=["flat", "sharp"], fusions=["flat+sharp"], thresholds=[0.5], store=True, seed=3,
        methods=[explainer_pb2.METHOD_LAYERCAM, explainer_pb2.METHOD_GRAD_X_INPUT], **_request_paths(roots))
    _, result = _events(stub.SearchDefaults(request))
    assert (result.search_images, result.held_out_images) == (3, 2)  # round(5 * 0.5) held out
    sources = [(method_names.name_of(c.method), c.layer) for c in result.candidates]
    fused = ["flat:0.25+sharp:0.75", "flat:0.5+sharp:0.5", "flat:0.75+sharp:0.25"]
    assert sources == [(m, layer) for m in ("gradcam", "layercam") for layer in ("flat", "sharp", *fused)] + [
        ("grad-x-input", "")]
    by_source = dict(zip(sources, result.candidates, strict=True))
    assert by_source[("gradcam", "sharp")].mean_iou == pytest.approx(1.0)
    assert by_source[("gradcam", "flat")].score == pytest.approx(0.0, abs=1e-6)  # marks everything
    assert result.best.layer == "sharp" and result.stored
    assert (result.held_out.layer, result.held_out.method) == (result.best.layer, result.best.method)
    assert result.defaults_held_out.layer == "flat" and result.defaults_held_out.score == pytest.approx(0, abs=1e-6)

    # the held-out figures are a search of the winner alone on the images the search did not see
    model = _crafted_head(Crafted()).eval()
    loaded = LoadedModel(Manifest(name="crafted", version=1, architecture="test_crafted",
                                  classes=["def_front", "ok_front"], defect_class="def_front",
                                  preprocessing=Preprocessing(image_size=CRAFTED_SIZE, mean=[0.5] * 3, std=[0.5] * 3),
                                  explanation=zoo._gradcam("flat", 0.5)), crafted_arch, model)
    dataset = find_annotated(roots["crafted"] / "images", roots["crafted"] / "masks")
    searched, held = split_dataset(dataset, 0.5, 3)
    assert len(searched.items) == 3 and {i.name for i in searched.items}.isdisjoint(i.name for i in held.items)
    *_, outcome = search_defaults(loaded, held, method=method_names.name_of(result.best.method),
                                  layers=[result.best.layer], thresholds=[result.best.threshold])
    assert outcome.candidates[0].score == pytest.approx(result.held_out.score, abs=1e-6)

    request.holdout_fraction = 0.99
    with pytest.raises(Exception, match="cannot be split"):
        list(stub.SearchDefaults(request))
