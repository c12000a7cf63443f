"""The zdm.v1.Classifier gRPC servicer: validation, proto conversion, and the verdict path.

Per image, the calling gRPC thread decodes and preprocesses (common.images), then hands the tensor to
the model version's batcher and waits; the verdict (softmax, threshold decision) is built here and
the audit record is queued for the background writer. Everything below this module speaks plain
Python and numpy; proto messages exist only here.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from common.auth import caller
from common.errors import BadImage, DeadlineExceeded, InvalidArgument, Unavailable, ZdmError
from common.images import decode_image, preprocess
from common.manifest import defect_probability
from common.proto_convert import manifest_to_info
from common.registry import Registry
from common.settings import ClassifierSettings
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from services.classifier.audit import AuditEntry, AuditLog
from services.classifier.batcher import BatchOutput
from services.classifier.metrics import ClassifierMetrics
from services.classifier.model_store import LoadedModel, ModelStore
from services.classifier.thresholds import ThresholdStore, validate_threshold
from services.classifier.verification import VerificationReport

log = logging.getLogger(__name__)

_MAX_AUDIT_LIMIT = 1000
_END = object()


@dataclass(slots=True)
class _Pending:
    """What a verdict needs besides the model's output."""

    model: LoadedModel
    sha256: str
    decode_ms: float
    started: float
    request_id: str
    line_id: str
    part_id: str
    caller: str = ""  # the token's name (common.auth), captured on the request's thread
    threshold: float | None = None  # the caller's, for this request only


def _caller_threshold(request: classifier_pb2.ClassifyRequest | classifier_pb2.ClassifyBatchRequest) -> float | None:
    return validate_threshold(request.threshold) if request.HasField("threshold") else None


@dataclass(slots=True)
class _ItemFailure:
    """A stream item that failed before or after compute; becomes a Verdict with error set."""

    request_id: str
    code: grpc.StatusCode
    message: str


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(
        self,
        settings: ClassifierSettings,
        store: ModelStore,
        registry: Registry,
        thresholds: ThresholdStore,
        audit: AuditLog,
        metrics: ClassifierMetrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._thresholds = thresholds
        self._audit = audit
        self._metrics = metrics
        self._decode_hist = metrics.stage.labels("decode")
        self._queue_hist = metrics.stage.labels("queue")
        self._infer_hist = metrics.stage.labels("inference")

    # -- RPCs -------------------------------------------------------------------------------------
    def Classify(self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext) -> classifier_pb2.Verdict:
        with self._observed("Classify"):
            started = time.perf_counter()
            self._check_ids(request)
            threshold = _caller_threshold(request)
            ref = request.model
            with self._store.lease(ref.name, ref.version, ref.alias) as model:
                with model.batcher.reserve() as token:
                    tensor, sha, decode_ms = self._prepare(model, request.image, request.image.name)
                    future = model.batcher.submit(
                        tensor, deadline=_deadline(context), is_active=context.is_active, reservation=token
                    )
                pending = _Pending(model, sha, decode_ms, started, request.request_id, request.line_id,
                                   request.part_id, caller(), threshold)
                return self._verdict(pending, _wait(future, context))

    def ClassifyBatch(
        self, request: classifier_pb2.ClassifyBatchRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyBatchResponse:
        with self._observed("ClassifyBatch"):
            started = time.perf_counter()
            images = request.images
            if not images:
                raise InvalidArgument("images is empty")
            if len(images) > self._settings.max_batch_images:
                raise InvalidArgument(f"images has {len(images)} entries > limit {self._settings.max_batch_images}; "
                                      "split the batch (or use ClassifyStream)")
            part_ids = list(request.part_ids)
            if part_ids and len(part_ids) != len(images):
                raise InvalidArgument(f"part_ids has {len(part_ids)} entries for {len(images)} images")
            self._check_id_length("line_id", request.line_id)
            for i, part_id in enumerate(part_ids):
                self._check_id_length(f"part_ids[{i}]", part_id)
            for i, image in enumerate(images):
                self._check_id_length(f"images[{i}].name", image.name)
            threshold = _caller_threshold(request)
            ref = request.model
            with self._store.lease(ref.name, ref.version, ref.alias) as model:
                verdicts = self.classify_images(model, images, context, started, line_id=request.line_id,
                                              part_ids=part_ids, threshold=threshold)
            return classifier_pb2.ClassifyBatchResponse(verdicts=verdicts)

    # -- the verdict path for other front ends (services.classifier.inference_protocol) ------------
    def classify_images(
        self,
        model: LoadedModel,
        images: Sequence[common_pb2.Image],
        context: grpc.ServicerContext,
        started: float,
        *,
        line_id: str = "",
        part_ids: Sequence[str] = (),
        request_id: str = "",
        threshold: float | None = None,
    ) -> list[classifier_pb2.Verdict]:
        """Verdicts (audited) for encoded images, as ClassifyBatch computes them; BadImage names the index.
        ``threshold``: the caller's for this call, else the model's threshold in force."""

        def prepare(i: int) -> tuple[np.ndarray, str, float]:
            image = images[i]
            try:
                return self._prepare(model, image, image.name or f"#{i}")
            except BadImage as exc:
                raise BadImage(f"images[{i}]: {exc.message}") from exc

        outputs = self._batch_outputs(model, len(images), prepare, context)
        return self._verdicts(model, outputs, started, line_id, part_ids, request_id, threshold)

    def classify_tensors(
        self,
        model: LoadedModel,
        tensors: np.ndarray,
        context: grpc.ServicerContext,
        started: float,
        *,
        line_id: str = "",
        part_ids: Sequence[str] = (),
        request_id: str = "",
    ) -> list[classifier_pb2.Verdict]:
        """Verdicts (audited) for already preprocessed float32 NCHW tensors the caller has validated;
        the audit's image hash is the SHA-256 of each tensor's bytes."""

        def prepare(i: int) -> tuple[np.ndarray, str, float]:
            tensor = np.ascontiguousarray(tensors[i], dtype=np.float32)
            return tensor, hashlib.sha256(tensor.tobytes()).hexdigest(), 0.0

        outputs = self._batch_outputs(model, len(tensors), prepare, context)
        return self._verdicts(model, outputs, started, line_id, part_ids, request_id)

    def observed(self, method: str) -> contextlib.AbstractContextManager[None]:
        """Counts and times a call of ``method`` in the classifier's call metrics."""
        return self._observed(method)

    def _verdicts(
        self,
        model: LoadedModel,
        outputs: list[tuple[str, float, BatchOutput]],
        started: float,
        line_id: str,
        part_ids: Sequence[str],
        request_id: str = "",
        threshold: float | None = None,
    ) -> list[classifier_pb2.Verdict]:
        verdicts = []
        for i, (sha, decode_ms, out) in enumerate(outputs):
            part_id = part_ids[i] if part_ids else ""
            pending = _Pending(model, sha, decode_ms, started, request_id, line_id, part_id, caller(), threshold)
            verdicts.append(self._verdict(pending, out))
        return verdicts

    def _batch_outputs(
        self,
        model: LoadedModel,
        count: int,
        prepare: Callable[[int], tuple[np.ndarray, str, float]],
        context: grpc.ServicerContext,
    ) -> list[tuple[str, float, BatchOutput]]:
        """(sha256, decode ms, output) per item; ``prepare(i)`` gives item i's (tensor, sha256, decode ms).
        Prepares chunk k+1 while chunk k computes, so at most two chunks of tensors are alive however
        many items the call carries. Nothing is audited before every item has been prepared: a bad
        image fails the whole call."""
        chunk = max(1, self._settings.max_batch_size)
        deadline = _deadline(context)
        results: list[tuple[str, float, BatchOutput]] = []
        in_flight: list[tuple[str, float, Future[BatchOutput]]] = []
        for start in range(0, count, chunk):
            prepared = [prepare(i) for i in range(start, min(start + chunk, count))]
            futures = model.batcher.submit_many([p[0] for p in prepared], deadline=deadline, is_active=context.is_active)
            results += [(sha, ms, _wait(f, context)) for sha, ms, f in in_flight]
            in_flight = [(sha, ms, f) for (_, sha, ms), f in zip(prepared, futures, strict=True)]
        results += [(sha, ms, _wait(f, context)) for sha, ms, f in in_flight]
        return results

    def ClassifyStream(
        self, request_iterator: Iterator[classifier_pb2.ClassifyRequest], context: grpc.ServicerContext
    ) -> Iterator[classifier_pb2.Verdict]:
        """Pipelined: a reader thread decodes and submits up to ``stream_window`` items ahead of the
        oldest unanswered one; verdicts go out in request order. A full window stops the reading,
        which lets gRPC flow control push back on the client."""
        window: queue.Queue[Any] = queue.Queue(maxsize=max(1, self._settings.stream_window))
        stop = threading.Event()
        reader = threading.Thread(
            target=contextvars.copy_context().run,
            name="stream-reader",
            daemon=True,
            args=(self._read_stream, request_iterator, context, window, stop),
        )
        reader.start()
        try:
            while True:
                entry = window.get()
                if entry is _END:
                    return
                if isinstance(entry, BaseException):
                    raise entry
                yield self._stream_verdict(entry, context)
        finally:
            stop.set()

    def GetModelInfo(
        self, request: classifier_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ServedModel:
        with self._observed("GetModelInfo"):
            ref = request.model
            with self._store.lease(ref.name, ref.version, ref.alias) as model:
                return self._served_model(model)

    def SetThreshold(
        self, request: classifier_pb2.SetThresholdRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ServedModel:
        with self._observed("SetThreshold"):
            name = request.name or self._store.default_name()
            if not name:
                raise Unavailable("no model is published yet; name the model")
            self._registry.resolve(name, default_alias=self._settings.default_alias)  # NotFound when unknown
            self._thresholds.set(name, request.threshold)
            with self._store.lease(name) as model:
                return self._served_model(model)

    def QueryAudit(self, request: classifier_pb2.AuditQuery, context: grpc.ServicerContext) -> classifier_pb2.AuditResponse:
        with self._observed("QueryAudit"):
            self._check_id_length("part_id", request.part_id)
            limit = min(request.limit or 100, _MAX_AUDIT_LIMIT)
            self._audit.flush(timeout=1.0)  # read-your-writes on this replica
            records = [_audit_record(e) for e in self._audit.query(request.part_id, limit)]
            return classifier_pb2.AuditResponse(records=records)

    # -- verdict path -----------------------------------------------------------------------------
    def _prepare(self, model: LoadedModel, image: common_pb2.Image, name: str) -> tuple[np.ndarray, str, float]:
        """Decode, validate and preprocess one image: (tensor, sha256, decode ms)."""
        start = time.perf_counter()
        data = image.data
        pixels = decode_image(
            data,
            max_bytes=self._settings.max_image_bytes,
            max_pixels=self._settings.max_image_pixels,
            name=name,
            allow_alpha=self._settings.accept_alpha,
        )
        pre = model.manifest.preprocessing
        tensor = preprocess(pixels, pre.image_size, pre.mean, pre.std)
        sha = hashlib.sha256(data).hexdigest()
        decode_ms = (time.perf_counter() - start) * 1000
        self._decode_hist.observe(decode_ms / 1000)
        return tensor, sha, decode_ms

    def _verdict(self, p: _Pending, out: BatchOutput) -> classifier_pb2.Verdict:
        manifest = p.model.manifest
        probs = _softmax(out.logits)
        defects = p.model.defect_indices  # defective = not an ok class; binary: the one defect class
        defect_p = float(defect_probability(probs, defects))
        defect_type = manifest.classes[defects[int(np.argmax(probs[defects]))]]
        threshold = p.threshold if p.threshold is not None else self._thresholds.get(manifest.name,
                                                                                      manifest.decision_threshold)
        defective = defect_p >= threshold
        classes = manifest.classes
        now = time.time()
        self._audit.record(
            AuditEntry(
                image_sha256=p.sha256,
                model_name=manifest.name,
                model_version=manifest.version,
                threshold=threshold,
                probabilities={c: float(v) for c, v in zip(classes, probs, strict=True)},
                defective=defective,
                timestamp=now,
                line_id=p.line_id,
                part_id=p.part_id,
                request_id=p.request_id,
                backend=p.model.backend.name,
                caller=p.caller,
            )
        )
        self._queue_hist.observe(out.queue_ms / 1000)
        self._infer_hist.observe(out.inference_ms / 1000)
        total_ms = (time.perf_counter() - p.started) * 1000
        return classifier_pb2.Verdict(
            probabilities=[
                classifier_pb2.ClassProbability(class_name=c, probability=float(v))
                for c, v in zip(classes, probs, strict=True)
            ],
            predicted_class=classes[int(np.argmax(probs))],
            defective=defective,
            defect_probability=defect_p,
            threshold=threshold,
            model=common_pb2.ModelRef(name=manifest.name, version=manifest.version),
            timing=classifier_pb2.Timing(
                decode_ms=p.decode_ms, queue_ms=out.queue_ms, inference_ms=out.inference_ms, total_ms=total_ms
            ),
            image_sha256=p.sha256,
            request_id=p.request_id,
            backend=p.model.backend.name,
            defect_type=defect_type,
        )

    # -- stream -----------------------------------------------------------------------------------
    def _read_stream(
        self,
        requests: Iterator[classifier_pb2.ClassifyRequest],
        context: grpc.ServicerContext,
        window: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        """Reader thread: submit each item (or record its failure) in order, then the end marker."""

        def put(entry: object) -> bool:
            while not stop.is_set():
                try:
                    window.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for request in requests:
                if not put(self._stream_submit(request, context)):
                    return
        except Exception as exc:  # noqa: BLE001 - the reading itself broke (e.g. the call was cancelled)
            if context.is_active():
                log.exception("ClassifyStream: reading requests failed")
                put(exc)
                return
        put(_END)

    def _stream_submit(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> tuple[_Pending, Future[BatchOutput]] | _ItemFailure:
        started = time.perf_counter()
        ref = request.model
        try:
            self._check_ids(request)
            threshold = _caller_threshold(request)
            model = self._store.acquire(ref.name, ref.version, ref.alias)
        except ZdmError as exc:
            echoed = request.request_id if len(request.request_id) <= self._settings.max_id_length else ""
            return self._item_failed(echoed, exc.code, exc.message, started)
        try:
            with model.batcher.reserve() as token:
                tensor, sha, decode_ms = self._prepare(model, request.image, request.image.name)
                future = model.batcher.submit(
                    tensor, deadline=_deadline(context), is_active=context.is_active, reservation=token, inline=False
                )
        except ZdmError as exc:
            self._store.release(model)
            return self._item_failed(request.request_id, exc.code, exc.message, started)
        except Exception:
            self._store.release(model)
            log.exception("ClassifyStream: item %r failed", request.request_id)
            return self._item_failed(request.request_id, grpc.StatusCode.INTERNAL, "internal error", started)
        future.add_done_callback(lambda _f: self._store.release(model))
        pending = _Pending(model, sha, decode_ms, started, request.request_id, request.line_id,
                           request.part_id, caller(), threshold)
        return pending, future

    def _stream_verdict(
        self, entry: tuple[_Pending, Future[BatchOutput]] | _ItemFailure, context: grpc.ServicerContext
    ) -> classifier_pb2.Verdict:
        if isinstance(entry, _ItemFailure):
            return classifier_pb2.Verdict(
                request_id=entry.request_id, error=classifier_pb2.ItemError(code=entry.code.value[0], message=entry.message)
            )
        pending, future = entry
        try:
            verdict = self._verdict(pending, _wait(future, context))
        except ZdmError as exc:
            failure = self._item_failed(pending.request_id, exc.code, exc.message, pending.started)
            return self._stream_verdict(failure, context)
        except Exception:
            log.exception("ClassifyStream: item %r failed", pending.request_id)
            failure = self._item_failed(pending.request_id, grpc.StatusCode.INTERNAL, "internal error", pending.started)
            return self._stream_verdict(failure, context)
        self._metrics.observe_call("ClassifyStream", "OK", time.perf_counter() - pending.started)
        return verdict

    def _item_failed(self, request_id: str, code: grpc.StatusCode, message: str, started: float) -> _ItemFailure:
        self._metrics.observe_call("ClassifyStream", code.name, time.perf_counter() - started)
        return _ItemFailure(request_id, code, message)

    # -- helpers ----------------------------------------------------------------------------------
    def _check_id_length(self, field: str, value: str) -> None:
        """Ids are stored (audit records, Redis keys) and echoed: bounded before any work."""
        limit = self._settings.max_id_length
        if len(value) > limit:
            raise InvalidArgument(f"{field} is {len(value)} characters long > limit {limit}")

    def _check_ids(self, request: classifier_pb2.ClassifyRequest) -> None:
        for field in ("request_id", "line_id", "part_id"):
            self._check_id_length(field, getattr(request, field))
        self._check_id_length("image.name", request.image.name)

    @contextlib.contextmanager
    def _observed(self, method: str) -> Iterator[None]:
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except ZdmError as exc:
            code = exc.code.name
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            self._metrics.observe_call(method, code, time.perf_counter() - start)

    def _served_model(self, model: LoadedModel) -> classifier_pb2.ServedModel:
        manifest = model.manifest
        return classifier_pb2.ServedModel(
            info=manifest_to_info(manifest, self._registry.aliases_of(manifest.name, manifest.version)),
            threshold=self._thresholds.get(manifest.name, manifest.decision_threshold),
            backend=model.backend.name,
            loaded_at=model.loaded_at,
            verification=_verification(getattr(model.backend, "verification", None)),
        )


def _verification(report: VerificationReport | None) -> classifier_pb2.BackendVerification | None:
    if report is None:  # a backend built outside create_backend (a custom factory)
        return None
    chosen = report.chosen
    return classifier_pb2.BackendVerification(
        method=report.method,
        images=report.images,
        threshold=report.threshold,
        tolerance=report.tolerance,
        max_delta=chosen.max_delta if chosen is not None else 0.0,
        detail=chosen.detail if chosen is not None else "",
        rejected=[
            classifier_pb2.BackendRejection(
                backend=o.backend, reason=o.reason, detail=o.detail, flips=o.flips, max_delta=o.max_delta
            )
            for o in report.rejected
        ],
    )


# A call without a deadline reports a time remaining of centuries; treat anything beyond a day as none.
_NO_DEADLINE_S = 86_400.0


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else remaining


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = _remaining(context)
    return None if remaining is None else time.perf_counter() + remaining


def _wait(future: Future[BatchOutput], context: grpc.ServicerContext) -> BatchOutput:
    """The item's result; DeadlineExceeded as soon as the call's deadline passes (the item is then
    dropped by the batcher instead of computed)."""
    remaining = _remaining(context)
    try:
        return future.result(timeout=None if remaining is None else max(0.0, remaining))
    except FutureTimeout:
        raise DeadlineExceeded("deadline exceeded while waiting for a batch") from None


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


def _audit_record(entry: AuditEntry) -> classifier_pb2.AuditRecord:
    return classifier_pb2.AuditRecord(
        image_sha256=entry.image_sha256,
        model=common_pb2.ModelRef(name=entry.model_name, version=entry.model_version),
        threshold=entry.threshold,
        probabilities=[classifier_pb2.ClassProbability(class_name=c, probability=p) for c, p in entry.probabilities.items()],
        defective=entry.defective,
        timestamp=entry.timestamp,
        line_id=entry.line_id,
        part_id=entry.part_id,
        caller=entry.caller,
    )
