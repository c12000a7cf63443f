"""Inference backends for the classifier: OpenVINO, ONNX Runtime and torch, behind one protocol.

Every backend takes a float32 ``N x 3 x S x S`` batch (already preprocessed) and returns float32
logits ``N x C``; every ``infer`` is safe to call from several threads at once.

``create_backend("auto", ...)`` picks torch on CUDA when a GPU exists, else OpenVINO (bf16 where the
CPU has native bf16), falling back to OpenVINO f32, ONNX Runtime and then torch on the CPU when a
conversion fails or when the candidate does not reproduce the version's verification set
(:mod:`services.classifier.verification`); each fallback is logged as a warning with its reason and
recorded in the returned backend's ``verification`` report.

Threads: OpenVINO, ONNX Runtime and torch each keep their own worker pool, sized to the core count by
default. Give the chosen backend ``num_threads`` and leave the rest of the cores to image decoding; do
not run two CPU backends in one process at full width.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn

from services.classifier import export
from services.classifier.export import ExportError
from services.classifier.verification import (
    REASON_BUILD,
    NoiseVerifier,
    Outcome,
    VerificationReport,
    Verifier,
)

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

BackendKind = Literal["auto", "openvino", "onnxruntime", "torch"]
Precision = Literal["auto", "bf16", "f32"]
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]


@runtime_checkable
class Backend(Protocol):
    """A loaded model that maps a preprocessed batch to logits."""

    name: str
    verification: VerificationReport | None  # how create_backend chose it; None when built directly

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, ``N x C``) for a float32 ``N x 3 x S x S`` batch. Thread-safe."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """Tuning knobs; the defaults suit a small CPU box serving one model beside a decode pool.

    Attributes:
        num_threads: Inference threads for OpenVINO (``INFERENCE_NUM_THREADS``) and ONNX Runtime
            (intra-op). None: the runtime's default (all cores). Torch's pool is process-wide
            (``torch.set_num_threads``), so the service sets it once at start-up, not here.
        precision: OpenVINO inference precision; "auto" is bf16 where the CPU reports BF16, else f32.
        performance_hint: OpenVINO ``PERFORMANCE_HINT``. LATENCY runs one stream using all its threads
            per request (best with a batcher feeding one batch at a time); THROUGHPUT runs several
            streams that only pay off with several requests in flight.
        num_requests: OpenVINO infer requests in the pool (concurrent ``infer`` calls beyond it wait).
            None: the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``.
        ort_allow_spinning: Let ONNX Runtime worker threads spin while idle. Spinning shaves latency
            but burns the cores that decode threads need, so it is off by default.
        openvino_config: Extra OpenVINO CPU properties passed as they are to ``compile_model``
            (e.g. ``{"ENABLE_CPU_PINNING": False}``); they override the ones set from the fields above.
        verify: Verify every candidate (on the verification set when ``create_backend`` gets a
            verifier, else on random inputs against the torch model) and fall back when it fails.
    """

    num_threads: int | None = None
    precision: Precision = "auto"
    performance_hint: PerformanceHint = "LATENCY"
    num_requests: int | None = None
    ort_allow_spinning: bool = False
    openvino_config: Mapping[str, object] = field(default_factory=dict)
    verify: bool = True


def _as_batch(batch: np.ndarray, image_size: int) -> np.ndarray:
    """Check the shape and return a C-contiguous float32 view (or copy) of ``batch``."""
    if batch.ndim != 4 or batch.shape[1:] != (3, image_size, image_size):
        raise ValueError(f"expected a batch of shape (N, 3, {image_size}, {image_size}), got {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------------


def cpu_supports_bf16(core: ov.Core | None = None) -> bool:
    """True when OpenVINO's CPU plugin reports native bf16 (AVX512_BF16 or AMX)."""
    import openvino as ov

    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """OpenVINO on the CPU.

    Thread safety: a pool of infer requests; a caller takes one, runs it synchronously, copies the
    output and puts it back. Callers beyond the pool size wait for a free request.

    Note that the CPU plugin already defaults to bf16 on CPUs with native bf16, so f32 has to be
    asked for explicitly; this class always sets the hint.
    """

    def __init__(
        self,
        model: ov.Model | Path | str,
        image_size: int,
        *,
        precision: Precision = "auto",
        performance_hint: PerformanceHint = "LATENCY",
        num_threads: int | None = None,
        num_requests: int | None = None,
        extra_config: Mapping[str, object] | None = None,
    ) -> None:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        if precision == "auto":
            precision = "bf16" if cpu_supports_bf16(core) else "f32"
        elif precision == "bf16" and not cpu_supports_bf16(core):
            raise ValueError("precision bf16 asked for, but this CPU has no native bf16 support")
        config: dict[str, object] = {
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
            hints.performance_mode: getattr(hints.PerformanceMode, performance_hint),
        }
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            config[props.inference_num_threads] = num_threads
        config.update(extra_config or {})
        if not isinstance(model, ov.Model):
            model = core.read_model(Path(model))
        self.image_size = image_size
        self.num_classes = _static_classes(model.outputs[0].get_partial_shape(), "OpenVINO")
        self._compiled = core.compile_model(model, "CPU", config)
        n_req = num_requests or int(self._compiled.get_property(props.optimal_number_of_infer_requests))
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, n_req)):
            self._pool.put(self._compiled.create_infer_request())
        self.precision: str = precision
        self.num_requests = max(1, n_req)
        self.name = f"openvino-{precision}"
        self.from_cache = False
        self.verification: VerificationReport | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = _as_batch(batch, self.image_size)
        if x.shape[0] == 0:
            return np.empty((0, self.num_classes), np.float32)
        request = self._pool.get()
        try:
            # share_inputs: the request reads our array in place (we hold it until infer returns);
            # outputs are copied out (share_outputs=False), since the request is reused afterwards.
            result = request.infer({0: x}, share_inputs=True, share_outputs=False)
            out = np.asarray(result[0], dtype=np.float32)
        finally:
            self._pool.put(request)
        return out

    def describe(self) -> dict[str, object]:
        """The settings the plugin actually chose (for logs and /status)."""
        import openvino.properties as props
        import openvino.properties.hint as hints

        c = self._compiled
        return {
            "precision": c.get_property(hints.inference_precision).get_type_name(),
            "performance_hint": str(c.get_property(hints.performance_mode)),
            "num_streams": int(c.get_property(props.num_streams)),
            "inference_num_threads": int(c.get_property(props.inference_num_threads)),
            "num_requests": self.num_requests,
            "cpu_pinning": bool(c.get_property(hints.enable_cpu_pinning)),
        }


def _static_classes(shape: Iterable[object], what: str) -> int:
    """The class count C of an ``N x C`` output shape (OpenVINO Dimensions or ONNX Runtime ints/names)."""
    dims = list(shape)
    try:
        last = dims[-1]
        get_length = getattr(last, "get_length", None)
        n = int(get_length()) if get_length else int(last)  # type: ignore[call-overload]
    except (IndexError, TypeError, ValueError, RuntimeError) as e:
        raise ExportError(f"{what} model has no static class dimension: {shape}") from e
    if len(dims) != 2 or n < 1:
        raise ExportError(f"{what} model output must be N x C, got {shape}")
    return n


# --------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------


class OnnxRuntimeBackend:
    """ONNX Runtime with the CPU execution provider. ``InferenceSession.run`` is thread-safe."""

    def __init__(
        self,
        model: Path | str | bytes,
        image_size: int,
        *,
        num_threads: int | None = None,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            so.intra_op_num_threads = num_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(f"ONNX model has {len(inputs)} inputs and {len(outputs)} outputs")
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.num_classes = _static_classes(outputs[0].shape, "ONNX")
        self.image_size = image_size
        self.name = "onnxruntime"
        self.from_cache = False
        self.verification: VerificationReport | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = _as_batch(batch, self.image_size)
        if x.shape[0] == 0:
            return np.empty((0, self.num_classes), np.float32)
        (out,) = self._session.run([self._output], {self._input: x})
        return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------------


class TorchBackend:
    """Eager torch: fp32 on the CPU; on CUDA autocast (bf16 where supported, else fp16) unless ``autocast=False``.

    Works on its own deep copy of the model (channels_last and device moves would otherwise mutate the
    caller's module). Calls are serialised by a lock: concurrent eager forwards on the CPU would each
    fan out over the same cores, and on one CUDA stream they run one after another anyway.
    """

    def __init__(self, model: nn.Module, image_size: int, *, device: str = "cpu", autocast: bool = True) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        self._model = copy.deepcopy(model).eval().to(self.device, memory_format=torch.channels_last)
        self._amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda" and autocast:
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._lock = threading.Lock()
        self.image_size = image_size
        suffix = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self._amp_dtype]
        self.name = f"torch-{self.device.type}-{suffix}"
        self.from_cache = False
        self.verification: VerificationReport | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x_np = _as_batch(batch, self.image_size)
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if self._amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self._amp_dtype):
                    logits = self._model(x)
            else:
                logits = self._model(x)
            return logits.float().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Factory: the fallback ladder, each rung verified
# --------------------------------------------------------------------------------------------------

TORCH_CPU = "torch-cpu-fp32"


@dataclass(frozen=True)
class _Candidate:
    """One rung of the fallback ladder.

    Attributes:
        name: What reports and logs call it (the backend's ``name``).
        family: Candidates of one family share a conversion; when it fails, the rest of the family is skipped.
        lossy: Computes in less than fp32 (the random-input check allows more then).
        build: Builds it; ``fresh=True`` first drops a cached conversion that failed verification.
        settings: What decides its numbers besides the converted model (keys the cached outcome).
        reference: It is the reference itself (torch fp32 on the CPU).
    """

    name: str
    family: str
    lossy: bool
    build: Callable[[bool], tuple[Backend, export.Artifact | None]]
    settings: Mapping[str, object] = field(default_factory=dict)
    reference: bool = False


def create_backend(
    kind: BackendKind,
    model: nn.Module,
    image_size: int,
    cache_dir: Path | None,
    cache_key: str,
    device: str = "cpu",
    *,
    options: BackendOptions | None = None,
    verifier: Verifier | None = None,
) -> Backend:
    """Build a verified backend for an eval-mode CPU ``model`` taking ``3 x image_size x image_size`` input.

    Candidates are tried in ladder order and the first that builds and passes ``verifier`` serves:
    OpenVINO bf16 (where the CPU has it and ``options.precision`` allows) -> OpenVINO f32 -> ONNX
    Runtime -> torch fp32 on the CPU; on CUDA, torch with autocast -> torch fp32 -> torch on the CPU.
    ``kind`` picks where the ladder starts. Each rejection is logged as a warning with its reason; the
    returned backend's ``verification`` holds the report (chosen backend, rejections, method).

    Args:
        kind: "auto": torch on CUDA when a GPU exists (``device`` if it names a CUDA device, else
            "cuda"), otherwise OpenVINO. "openvino", "onnxruntime", "torch": start there; a failure to
            build the asked-for backend raises, a failed verification falls back down the ladder.
        model: The trained module, in eval mode, on the CPU. It is not modified.
        image_size: Input height and width.
        cache_dir: Where converted models (and verification outcomes) are cached; None converts in
            memory every time.
        cache_key: Content hash of the checkpoint; names the cache entry.
        device: The torch device for kind "torch" (see ``kind`` for "auto").
        options: Threads, precision and the like; defaults to ``BackendOptions()``.
        verifier: Judges each candidate; None: random inputs against ``model`` (``NoiseVerifier``),
            or nothing when ``options.verify`` is False.

    Raises:
        ExportError: the asked-for backend's conversion failed, or no candidate passed verification.
        ValueError: unknown kind, bad arguments, a model not in eval mode.
    """
    options = options or BackendOptions()
    if model.training:
        raise ValueError("create_backend needs an eval-mode model (call model.eval() first)")
    if kind not in ("auto", "openvino", "onnxruntime", "torch"):
        raise ValueError(f"unknown backend kind {kind!r}; expected auto, openvino, onnxruntime or torch")
    if cache_dir is not None:
        export.check_cache_key(cache_key)
    if verifier is None and options.verify:
        verifier = NoiseVerifier(model, image_size)
    ladder = _ladder(kind, model, image_size, cache_dir, cache_key, device, options)
    report = VerificationReport(
        method=verifier.method if verifier is not None else "off",
        images=verifier.images if verifier is not None else 0,
        threshold=verifier.threshold if verifier is not None else 0.0,
        tolerance=verifier.tolerance if verifier is not None else 0.0,
    )
    broken: dict[str, str] = {}  # family -> why its shared conversion failed
    for i, candidate in enumerate(ladder):
        after = ladder[i + 1].name if i + 1 < len(ladder) else None
        if candidate.family in broken:
            report.outcomes.append(Outcome(candidate.name, False, REASON_BUILD, broken[candidate.family]))
            continue
        try:
            backend, outcome = _build_verified(candidate, verifier, cache_dir, cache_key)
        except Exception as e:
            if (kind != "auto" and i == 0) or after is None:
                raise
            detail = f"{type(e).__name__}: {e}"
            if isinstance(e, ExportError):  # the shared conversion failed; other errors are this candidate's own
                broken[candidate.family] = detail
            report.outcomes.append(Outcome(candidate.name, False, REASON_BUILD, detail))
            logger.warning("backend %s unavailable, falling back to %s: %s", candidate.name, after, detail)
            continue
        report.outcomes.append(outcome)
        if outcome.passed:
            backend.verification = report
            log = logger.warning if report.rejected else logger.info
            log("serving %s (%s: %s)%s", candidate.name, report.method, outcome.detail,
                "; rejected: " + "; ".join(f"{o.backend}: {o.reason}" for o in report.rejected) if report.rejected else "")
            return backend
        if candidate.reference or after is None:
            raise ExportError(
                f"{candidate.name} does not reproduce the version's verification set, so the weights are not the "
                f"ones that were validated: {outcome.detail}"
            )
        logger.warning("backend %s rejected (%s), falling back to %s: %s", candidate.name, outcome.reason, after,
                       outcome.detail)
    raise AssertionError("the ladder always ends with torch, which returns or raises")


def _build_verified(
    candidate: _Candidate, verifier: Verifier | None, cache_dir: Path | None, cache_key: str
) -> tuple[Backend, Outcome]:
    """Build ``candidate`` and judge it, reusing (and writing) the cached outcome of this conversion."""
    backend, artifact = candidate.build(False)
    if verifier is None:
        return backend, Outcome(candidate.name, True, "", "not verified (verification is off)")
    if candidate.reference and not verifier.checks_reference:
        return backend, Outcome(candidate.name, True, "", "the reference the random-input check compares with")
    record = _outcome_record(candidate, verifier, artifact, cache_dir, cache_key)
    if record is not None and (stored := export.read_outcome(record)) is not None:
        return backend, Outcome.read_record(stored)
    outcome = verifier.check(backend, lossy=candidate.lossy)
    if not outcome.passed and artifact is not None and artifact.from_cache and not candidate.lossy:
        # An intact entry can still be wrong for this model when a caller reuses a cache key for other weights.
        # (A lossy candidate's rejection says nothing about the entry: the exact one sharing it will tell.)
        logger.warning("cached model %s is unusable for this model (%s); converting again", artifact.path, outcome.detail)
        backend, artifact = candidate.build(True)
        record = _outcome_record(candidate, verifier, artifact, cache_dir, cache_key)
        outcome = verifier.check(backend, lossy=candidate.lossy)
    if record is not None:
        export.write_outcome(record, outcome.to_record())
    return backend, outcome


def _outcome_record(
    candidate: _Candidate, verifier: Verifier, artifact: export.Artifact | None, cache_dir: Path | None, cache_key: str
) -> Path | None:
    """Where the outcome of this conversion + runtime settings + verification set + threshold is cached.

    Everything the outcome depends on is in the key: the converted files' hashes, the candidate's
    settings and runtime version, the CPU, and the verifier's identity (set hash, normalisation,
    threshold, tolerance). A random-input check has no identity and is never cached.
    """
    if cache_dir is None or artifact is None or not artifact.digest or verifier.identity is None:
        return None
    key = {"candidate": candidate.name, "settings": dict(candidate.settings), "artifact": artifact.digest,
           "verifier": verifier.identity, "cpu": _cpu_identity()}
    return export.outcome_path(cache_dir, cache_key, json.dumps(key, sort_keys=True, default=str))


@functools.cache
def _cpu_identity() -> str:
    """The CPU as OpenVINO sees it (name and instruction-set capabilities): bf16 results depend on it."""
    try:
        import openvino as ov

        core = ov.Core()
        return f"{core.get_property('CPU', 'FULL_DEVICE_NAME')} {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}"
    except Exception:  # noqa: BLE001 - no OpenVINO: fall back to what the platform says
        import platform

        return f"{platform.machine()} {platform.processor()}"


def _openvino_precisions(options: BackendOptions) -> list[str]:
    if options.precision == "f32":
        return ["f32"]
    if options.precision == "bf16" or cpu_supports_bf16():
        return ["bf16", "f32"]
    return ["f32"]


def _ladder(
    kind: BackendKind,
    model: nn.Module,
    image_size: int,
    cache_dir: Path | None,
    cache_key: str,
    device: str,
    options: BackendOptions,
) -> list[_Candidate]:
    def torch_candidate(dev: str, autocast: bool = True) -> _Candidate:
        def build(_fresh: bool) -> tuple[Backend, None]:
            return TorchBackend(model, image_size, device=dev, autocast=autocast), None

        cuda = torch.device(dev).type == "cuda"
        amp = "bf16" if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
        name = TORCH_CPU if not cuda else f"torch-cuda-{amp if autocast else 'fp32'}"  # = TorchBackend.name
        return _Candidate(name, f"torch-{dev}", cuda and autocast, build, reference=not cuda)

    if kind == "torch" and not device.startswith("cuda"):
        return [torch_candidate("cpu")]
    if (kind == "auto" and (device.startswith("cuda") or torch.cuda.is_available())) or kind == "torch":
        dev = device if device.startswith("cuda") else "cuda"
        return [torch_candidate(dev), torch_candidate(dev, autocast=False), torch_candidate("cpu")]
    ort = _onnxruntime_candidate(model, image_size, cache_dir, cache_key, options)
    if kind == "onnxruntime":
        return [ort, torch_candidate("cpu")]
    convert = _memo(lambda: export.to_openvino(model, image_size))
    openvino = [_openvino_candidate(p, model, image_size, cache_dir, cache_key, options, convert)
                for p in _openvino_precisions(options)]
    return [*openvino, ort, torch_candidate("cpu")]


_T = TypeVar("_T")


def _memo(fn: Callable[[], _T]) -> Callable[[], _T]:
    """``fn`` run once, on first call (an in-memory conversion shared by the candidates of a family)."""
    box: list[_T] = []

    def get() -> _T:
        if not box:
            box.append(fn())
        return box[0]

    return get


def _openvino_candidate(
    precision: str,
    model: nn.Module,
    image_size: int,
    cache_dir: Path | None,
    cache_key: str,
    options: BackendOptions,
    convert_in_memory: Callable[[], ov.Model],
) -> _Candidate:
    import openvino as ov

    def make(source: ov.Model | Path) -> OpenVinoBackend:
        return OpenVinoBackend(
            source,
            image_size,
            precision=precision,  # type: ignore[arg-type]
            performance_hint=options.performance_hint,
            num_threads=options.num_threads,
            num_requests=options.num_requests,
            extra_config=options.openvino_config,
        )

    def build(fresh: bool) -> tuple[Backend, export.Artifact | None]:
        if cache_dir is None:
            return make(convert_in_memory()), None
        return _load_cached(lambda: export.cached_openvino(model, image_size, cache_dir, cache_key), make, fresh)

    settings = {"precision": precision, "hint": options.performance_hint, "threads": options.num_threads,
                "config": sorted((str(k), str(v)) for k, v in options.openvino_config.items()),
                "openvino": ov.get_version()}
    return _Candidate(f"openvino-{precision}", "openvino", precision == "bf16", build, settings)


def _onnxruntime_candidate(
    model: nn.Module, image_size: int, cache_dir: Path | None, cache_key: str, options: BackendOptions
) -> _Candidate:
    def make(source: bytes | Path) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(
            source, image_size, num_threads=options.num_threads, allow_spinning=options.ort_allow_spinning
        )

    def build(fresh: bool) -> tuple[Backend, export.Artifact | None]:
        if cache_dir is None:
            return make(export.to_onnx_bytes(model, image_size)), None
        return _load_cached(lambda: export.cached_onnx(model, image_size, cache_dir, cache_key), make, fresh)

    import onnxruntime

    settings = {"threads": options.num_threads, "onnxruntime": onnxruntime.__version__}
    return _Candidate("onnxruntime", "onnxruntime", False, build, settings)


_B = TypeVar("_B", OpenVinoBackend, OnnxRuntimeBackend)


def _load_cached(
    convert: Callable[[], export.Artifact], make: Callable[[Path], _B], fresh: bool
) -> tuple[_B, export.Artifact]:
    """Load the cached conversion (dropping it first when ``fresh``); one that fails to load is rebuilt once."""
    artifact = convert()
    if fresh and artifact.from_cache:
        export.invalidate(artifact)
        artifact = convert()
    try:
        backend = make(artifact.path)
    except Exception as e:
        if not artifact.from_cache:
            raise
        logger.warning("cached model %s is unusable (%s); converting again", artifact.path, e)
        export.invalidate(artifact)
        artifact = convert()
        backend = make(artifact.path)
    backend.from_cache = artifact.from_cache
    return backend, artifact
