"""Open Inference Protocol v2 (``inference.GRPCInferenceService``, the KServe / Triton gRPC API) on the classifier.

Translation only: OIP tensors in, the zdm.v1 verdict path (:class:`ClassifierServicer` — batcher, backend,
threshold at the model's operating point, audit) in the middle, OIP tensors out. So a Triton or KServe
client gets the same verdicts, probabilities and audit records as a ``Classify`` call.

Models: the OIP model name is the registry name ("" = the classifier's default model); the version
string is a version number ("3"), an alias ("production", "staging") or "" (the default alias, else
the newest version). Responses carry the exact version that answered.

Inputs (exactly one, read by its datatype so clients written for other image models work unchanged):

- ``image``, BYTES ``[N]`` (or ``[N, 1]``): encoded JPEG / PNG / BMP / TIFF files, as KServe's image
  examples send them; base64 text of such a file is accepted too (what KServe's REST examples carry).
- ``pixels``, FP32 ``[N, 3, S, S]``: already preprocessed (resized to the manifest's size, normalised).

Outputs (all unless the request names some): ``probabilities`` FP32 ``[N, C]`` in the manifest's class
order, ``defect_probability`` FP32 ``[N]``, ``defective`` BOOL ``[N]`` (the verdict),
``threshold`` FP32 ``[N]`` and ``predicted_class`` BYTES ``[N]``. Request parameters ``line_id`` and
``part_id`` (strings) go into the audit record like their zdm.v1 fields, and so does the request's ``id``.

A process can hold only one definition of the ``inference`` package: ``tritonclient.grpc`` carries its
own, so a client process uses tritonclient or :mod:`protos.inference`, not both.
"""

from __future__ import annotations

import binascii
import importlib.metadata
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from common.errors import InvalidArgument, NotFound
from common.images import sniff_format
from common.manifest import Manifest
from common.registry import Registry
from common.settings import ClassifierSettings
from protos.inference import open_inference_pb2 as oip
from protos.inference import open_inference_pb2_grpc as oip_grpc
from protos.zdm.v1 import classifier_pb2, common_pb2
from services.classifier.model_store import ModelStore
from services.classifier.servicer import ClassifierServicer

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "zdm-classifier"
PLATFORM = "zdm_classifier"

INPUT_IMAGE = "image"
INPUT_PIXELS = "pixels"
OUTPUTS = ("probabilities", "defect_probability", "defective", "threshold", "predicted_class")
_IMAGE_DATATYPE = "BYTES"
_PIXELS_DATATYPE = "FP32"


def _server_version() -> str:
    try:
        return importlib.metadata.version("zdm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class ModelSelector:
    """An OIP (name, version string) as the model store reads it."""

    name: str
    version: int
    alias: str

    @classmethod
    def parse(cls, name: str, version: str) -> ModelSelector:
        version = version.strip()
        if version.isdigit():
            number = int(version)
            if number == 0:
                raise InvalidArgument("model version 0 does not exist; versions start at 1")
            return cls(name, number, "")
        return cls(name, 0, version)


class InferenceProtocolServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves OIP v2 beside zdm.v1 on the classifier's port, through the zdm.v1 servicer's verdict path."""

    def __init__(
        self, settings: ClassifierSettings, store: ModelStore, registry: Registry, classifier: ClassifierServicer
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._classifier = classifier
        self._version = _server_version()

    # -- health and metadata ----------------------------------------------------------------------
    def ServerLive(self, request: oip.ServerLiveRequest, context: grpc.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request: oip.ServerReadyRequest, context: grpc.ServicerContext) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._store.ready)

    def ModelReady(self, request: oip.ModelReadyRequest, context: grpc.ServicerContext) -> oip.ModelReadyResponse:
        """Ready = that version is loaded now. An unknown model is simply not ready (as Triton answers)."""
        try:
            manifest = self._manifest(ModelSelector.parse(request.name, request.version))
        except NotFound:
            return oip.ModelReadyResponse(ready=False)
        loaded = {m.key for m in self._store.loaded()}
        return oip.ModelReadyResponse(ready=(manifest.name, manifest.version) in loaded)

    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    def ModelMetadata(self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext) -> oip.ModelMetadataResponse:
        """From the registry alone (nothing is loaded): NOT_FOUND for an unknown model, version or alias."""
        manifest = self._manifest(ModelSelector.parse(request.name, request.version))
        size = manifest.preprocessing.image_size
        channels = manifest.preprocessing.channels
        tensor = oip.ModelMetadataResponse.TensorMetadata
        aliases = self._registry.aliases(manifest.name)
        return oip.ModelMetadataResponse(
            name=manifest.name,
            versions=[str(v) for v in self._registry.versions(manifest.name)],
            platform=PLATFORM,
            inputs=[
                tensor(name=INPUT_IMAGE, datatype=_IMAGE_DATATYPE, shape=[-1]),
                tensor(name=INPUT_PIXELS, datatype=_PIXELS_DATATYPE, shape=[-1, channels, size, size]),
            ],
            outputs=[
                tensor(name="probabilities", datatype="FP32", shape=[-1, len(manifest.classes)]),
                tensor(name="defect_probability", datatype="FP32", shape=[-1]),
                tensor(name="defective", datatype="BOOL", shape=[-1]),
                tensor(name="threshold", datatype="FP32", shape=[-1]),
                tensor(name="predicted_class", datatype="BYTES", shape=[-1]),
            ],
            properties={
                "version": str(manifest.version),
                "classes": ",".join(manifest.classes),
                "defect_class": manifest.defect_class,
                "aliases": ",".join(f"{a}={v}" for a, v in sorted(aliases.items())),
            },
        )

    # -- inference --------------------------------------------------------------------------------
    def ModelInfer(self, request: oip.ModelInferRequest, context: grpc.ServicerContext) -> oip.ModelInferResponse:
        with self._classifier.observed("ModelInfer"):
            started = time.perf_counter()
            selector = ModelSelector.parse(request.model_name, request.model_version)
            tensor = _single_input(request)
            requested = _requested_outputs(request)
            line_id = _string_parameter(request, "line_id")
            part_id = _string_parameter(request, "part_id")
            images = _images(tensor) if tensor.datatype == _IMAGE_DATATYPE else None
            part_ids = [part_id] * tensor.shape[0] if part_id else []
            with self._store.lease(selector.name, selector.version, selector.alias) as model:
                if images is not None:
                    verdicts = self._classifier.classify_images(
                        model, images, context, started, line_id=line_id, part_ids=part_ids, request_id=request.id
                    )
                else:
                    pixels = _pixels(tensor, model.manifest)
                    verdicts = self._classifier.classify_tensors(
                        model, pixels, context, started, line_id=line_id, part_ids=part_ids, request_id=request.id
                    )
                manifest, backend = model.manifest, model.backend.name
            response = oip.ModelInferResponse(
                model_name=manifest.name, model_version=str(manifest.version), id=request.id
            )
            response.parameters["backend"].string_param = backend
            for name in requested:
                datatype, shape, raw = _output(name, verdicts, len(manifest.classes))
                response.outputs.add(name=name, datatype=datatype, shape=shape)
                response.raw_output_contents.append(raw)
            return response

    # -- helpers ----------------------------------------------------------------------------------
    def _manifest(self, selector: ModelSelector) -> Manifest:
        name = selector.name or self._store.default_name()
        if not name:
            raise NotFound("no model is published yet; name the model")
        return self._registry.resolve(name, selector.version, selector.alias, self._settings.default_alias)


@dataclass(frozen=True, slots=True)
class _Input:
    """The request's one input with its raw bytes (None when it came as typed contents)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None
    contents: oip.InferTensorContents


def _single_input(request: oip.ModelInferRequest) -> _Input:
    if len(request.inputs) != 1:
        raise InvalidArgument(
            f"expected exactly one input ({INPUT_IMAGE!r} BYTES or {INPUT_PIXELS!r} FP32), got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.datatype not in (_IMAGE_DATATYPE, _PIXELS_DATATYPE):
        raise InvalidArgument(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; expected BYTES (encoded images) or FP32 (NCHW pixels)"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or any(d < 1 for d in shape):
        raise InvalidArgument(f"input {tensor.name!r} has shape {list(shape)}; every dimension must be >= 1")
    raw_count = len(request.raw_input_contents)
    if raw_count not in (0, 1):
        raise InvalidArgument(f"raw_input_contents has {raw_count} entries for 1 input")
    if raw_count and tensor.HasField("contents"):
        raise InvalidArgument(f"input {tensor.name!r} has both contents and raw_input_contents")
    raw = request.raw_input_contents[0] if raw_count else None
    return _Input(tensor.name, tensor.datatype, shape, raw, tensor.contents)


def _images(tensor: _Input) -> list[common_pb2.Image]:
    """The encoded images of a BYTES input: shape [N] or [N, 1]; base64 text is decoded."""
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidArgument(f"input {tensor.name!r} (BYTES) must have shape [N] or [N, 1], got {list(tensor.shape)}")
    count = tensor.shape[0]
    elements = _split_bytes(tensor.raw, tensor.name) if tensor.raw is not None else list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise InvalidArgument(f"input {tensor.name!r} has shape {list(tensor.shape)} but {len(elements)} elements")
    return [common_pb2.Image(data=_unwrap_base64(e), name=f"{tensor.name}[{i}]") for i, e in enumerate(elements)]


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    """Raw BYTES contents: each element is a 4-byte little-endian length, then that many bytes."""
    elements, offset, end = [], 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(f"input {name!r}: raw BYTES contents end inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(f"input {name!r}: raw BYTES element of {length} bytes runs past the end")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _unwrap_base64(data: bytes) -> bytes:
    """Image files start with bytes outside the base64 alphabet, so only non-images are tried as base64."""
    if sniff_format(data) is not None:
        return data
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return data  # not base64 either: the decoder reports it as a bad image
    return decoded if sniff_format(decoded) is not None else data


def _pixels(tensor: _Input, manifest: Manifest) -> np.ndarray:
    size, channels = manifest.preprocessing.image_size, manifest.preprocessing.channels
    expected = (tensor.shape[0], channels, size, size)
    if tensor.shape != expected:
        raise InvalidArgument(
            f"input {tensor.name!r} (FP32) must have shape [N, {channels}, {size}, {size}] for model "
            f"{manifest.name}:{manifest.version}, got {list(tensor.shape)}"
        )
    count = int(np.prod(expected))
    if tensor.raw is not None:
        if len(tensor.raw) != count * 4:
            raise InvalidArgument(f"input {tensor.name!r}: {len(tensor.raw)} raw bytes for {count} FP32 values")
        values = np.frombuffer(tensor.raw, dtype="<f4")
    else:
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        if values.size != count:
            raise InvalidArgument(f"input {tensor.name!r}: {values.size} fp32_contents for {count} values")
    if not np.isfinite(values).all():
        raise InvalidArgument(f"input {tensor.name!r} holds NaN or infinite values")
    return values.astype(np.float32, copy=False).reshape(expected)


def _requested_outputs(request: oip.ModelInferRequest) -> list[str]:
    names = [o.name for o in request.outputs] or list(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidArgument(f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    return names


def _string_parameter(request: oip.ModelInferRequest, key: str) -> str:
    if key not in request.parameters:
        return ""
    value = request.parameters[key]
    if value.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"parameter {key!r} must be a string")
    return value.string_param


def _output(name: str, verdicts: Sequence[classifier_pb2.Verdict], classes: int) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw little-endian contents) of one output tensor."""
    n = len(verdicts)
    if name == "probabilities":
        values = np.array([[p.probability for p in v.probabilities] for v in verdicts], dtype="<f4").reshape(n, classes)
        return "FP32", [n, classes], values.tobytes()
    if name == "defect_probability":
        return "FP32", [n], np.array([v.defect_probability for v in verdicts], dtype="<f4").tobytes()
    if name == "defective":
        return "BOOL", [n], np.array([v.defective for v in verdicts], dtype=np.bool_).tobytes()
    if name == "threshold":
        return "FP32", [n], np.array([v.threshold for v in verdicts], dtype="<f4").tobytes()
    encoded = [v.predicted_class.encode() for v in verdicts]
    return "BYTES", [n], b"".join(struct.pack("<I", len(e)) + e for e in encoded)
