"""Inference backends for the classifier: OpenVINO, ONNX Runtime and torch, behind one protocol.

Every backend takes a float32 ``N x 3 x S x S`` batch (already preprocessed) and returns float32
logits ``N x C``; every ``infer`` is safe to call from several threads at once.

``create_backend("auto", ...)`` picks torch on CUDA when a GPU exists, else OpenVINO (bf16 where the
CPU has native bf16), falling back to ONNX Runtime and then to torch on the CPU when a conversion
fails; each fallback is logged as a warning with its reason.

Threads: OpenVINO, ONNX Runtime and torch each keep their own worker pool, sized to the core count by
default. Give the chosen backend ``num_threads`` and leave the rest of the cores to image decoding; do
not run two CPU backends in one process at full width.
"""

from __future__ import annotations

import copy
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
        verify: After a conversion, compare the backend's logits with the torch model's on a fixed
            batch and treat a large difference as a failed conversion.
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
    """Eager torch: fp32 on the CPU; autocast (bf16 where supported, else fp16) on CUDA.

    Works on its own deep copy of the model (channels_last and device moves would otherwise mutate the
    caller's module). Calls are serialised by a lock: concurrent eager forwards on the CPU would each
    fan out over the same cores, and on one CUDA stream they run one after another anyway.
    """

    def __init__(self, model: nn.Module, image_size: int, *, device: str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        self._model = copy.deepcopy(model).eval().to(self.device, memory_format=torch.channels_last)
        self._amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._lock = threading.Lock()
        self.image_size = image_size
        suffix = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self._amp_dtype]
        self.name = f"torch-{self.device.type}-{suffix}"
        self.from_cache = False

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
# Factory
# --------------------------------------------------------------------------------------------------


def create_backend(
    kind: BackendKind,
    model: nn.Module,
    image_size: int,
    cache_dir: Path | None,
    cache_key: str,
    device: str = "cpu",
    *,
    options: BackendOptions | None = None,
) -> Backend:
    """Build a backend for an eval-mode CPU ``model`` taking ``3 x image_size x image_size`` input.

    Args:
        kind: "openvino", "onnxruntime" or "torch" build exactly that backend and raise on failure.
            "auto": torch on CUDA when a GPU exists (``device`` if it names a CUDA device, else
            "cuda"), otherwise OpenVINO, then ONNX Runtime, then torch on the CPU, logging a warning
            with the reason each time a candidate fails.
        model: The trained module, in eval mode, on the CPU. It is not modified.
        image_size: Input height and width.
        cache_dir: Where converted models are cached; None converts in memory every time.
        cache_key: Content hash of the checkpoint; names the cache entry.
        device: The torch device for kind "torch" (see ``kind`` for "auto").
        options: Threads, precision and the like; defaults to ``BackendOptions()``.

    Raises:
        ExportError: the asked-for backend's conversion failed or disagrees with torch.
        ValueError: unknown kind, bad arguments, a model not in eval mode.
    """
    options = options or BackendOptions()
    if model.training:
        raise ValueError("create_backend needs an eval-mode model (call model.eval() first)")
    if cache_dir is not None:
        export.check_cache_key(cache_key)
    builders = {
        "openvino": lambda: _build_openvino(model, image_size, cache_dir, cache_key, options),
        "onnxruntime": lambda: _build_onnxruntime(model, image_size, cache_dir, cache_key, options),
        "torch": lambda: TorchBackend(model, image_size, device=device),
    }
    if kind in builders:
        return builders[kind]()
    if kind != "auto":
        raise ValueError(f"unknown backend kind {kind!r}; expected auto, openvino, onnxruntime or torch")

    if device.startswith("cuda") or torch.cuda.is_available():
        return TorchBackend(model, image_size, device=device if device.startswith("cuda") else "cuda")
    for candidate, fallback in (("openvino", "onnxruntime"), ("onnxruntime", "torch")):
        try:
            return builders[candidate]()
        except Exception as e:  # any failure here means "use the next backend", loudly
            logger.warning("backend %s unavailable, falling back to %s: %s: %s", candidate, fallback, type(e).__name__, e)
    return TorchBackend(model, image_size, device="cpu")


def _build_openvino(
    model: nn.Module, image_size: int, cache_dir: Path | None, cache_key: str, options: BackendOptions
) -> OpenVinoBackend:
    def make(source: ov.Model | Path) -> OpenVinoBackend:
        return OpenVinoBackend(
            source,
            image_size,
            precision=options.precision,
            performance_hint=options.performance_hint,
            num_threads=options.num_threads,
            num_requests=options.num_requests,
            extra_config=options.openvino_config,
        )

    if cache_dir is None:
        return _checked(make(export.to_openvino(model, image_size)), model, image_size, options)
    return _build_cached(
        lambda: export.cached_openvino(model, image_size, cache_dir, cache_key), make, model, image_size, options
    )


def _build_onnxruntime(
    model: nn.Module, image_size: int, cache_dir: Path | None, cache_key: str, options: BackendOptions
) -> OnnxRuntimeBackend:
    def make(source: bytes | Path) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(
            source, image_size, num_threads=options.num_threads, allow_spinning=options.ort_allow_spinning
        )

    if cache_dir is None:
        return _checked(make(export.to_onnx_bytes(model, image_size)), model, image_size, options)
    return _build_cached(
        lambda: export.cached_onnx(model, image_size, cache_dir, cache_key), make, model, image_size, options
    )


_B = TypeVar("_B", OpenVinoBackend, OnnxRuntimeBackend)


def _build_cached(
    convert: Callable[[], export.Artifact],
    make: Callable[[Path], _B],
    model: nn.Module,
    image_size: int,
    options: BackendOptions,
) -> _B:
    """Load the cached conversion; if it fails to load or to verify, drop the entry and convert anew.

    A cached entry that is intact on disk can still be wrong for this model when a caller reuses a
    cache key for different weights; verification catches that and the entry is rebuilt once.
    """
    artifact = convert()
    try:
        backend = make(artifact.path)
        backend.from_cache = artifact.from_cache
        return _checked(backend, model, image_size, options)
    except Exception as e:
        if not artifact.from_cache:
            raise
        logger.warning("cached model %s is unusable for this model (%s); converting again", artifact.path, e)
        export.invalidate(artifact)
    artifact = convert()
    backend = make(artifact.path)
    backend.from_cache = artifact.from_cache
    return _checked(backend, model, image_size, options)


def _checked(backend: _B, model: nn.Module, image_size: int, options: BackendOptions) -> _B:
    if options.verify:
        lossy = isinstance(backend, OpenVinoBackend) and backend.precision == "bf16"
        verify_against_torch(backend, model, image_size, lossy=lossy)
    return backend


# Tolerances on max |logit difference| / max |torch logit| (floored at 1e-3, for near-zero logits).
# bf16 keeps 8 mantissa bits: on the timm test models and resnet18 logits moved by at most ~1.2 % of
# their scale; a broken conversion is off by the order of the logits themselves.
VERIFY_TOLERANCE = {False: 1e-3, True: 0.1}
# A model can be chaotic in fp32 itself (an untrained EfficientNetV2 has activations ~3e4, and two
# torch memory layouts disagree by ~10 %). The tolerance is then widened to this many times the
# model's own layout-to-layout difference, and a warning says the check is weak.
_NOISE_FACTOR = 10.0
_VERIFY_SCALE_FLOOR = 1e-3


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), _VERIFY_SCALE_FLOOR))


def verify_against_torch(backend: Backend, model: nn.Module, image_size: int, *, lossy: bool) -> float:
    """Compare ``backend`` with eager fp32 torch on a fixed random batch; return the relative error.

    Catches conversions that "succeed" but compute something else (a wrong layout, a dropped layer,
    a batch size baked in: the check uses 4 inputs, the trace used 2). A smoke check, not an accuracy
    test. The tolerance grows with the model's own fp32 noise (torch on NCHW vs channels_last input).

    Raises:
        ExportError: non-finite outputs, a shape mismatch or an error above tolerance.
    """
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(4, 3, image_size, image_size, generator=gen)
    with torch.inference_mode():
        ref = model(x).float().numpy()
        alt = model(x.contiguous(memory_format=torch.channels_last)).float().numpy()
    got = backend.infer(x.numpy())
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"{backend.name} output {got.shape} (finite: {np.isfinite(got).all()}) vs {ref.shape}")
    noise = _relative_error(alt, ref)
    tolerance = max(VERIFY_TOLERANCE[lossy], _NOISE_FACTOR * noise)
    if noise > VERIFY_TOLERANCE[False]:
        logger.warning(
            "model is numerically unstable in fp32 (two torch layouts differ by %.3g of the logit scale); "
            "checking %s against torch only to %.3g",
            noise,
            backend.name,
            tolerance,
        )
    rel = _relative_error(got, ref)
    if rel > tolerance:
        raise ExportError(f"{backend.name} disagrees with torch: relative logit error {rel:.3g} > {tolerance:.3g}")
    return rel
