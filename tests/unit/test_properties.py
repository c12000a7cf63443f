"""Property-based tests (hypothesis): decoding, masks, box text and job specs never fail other than on purpose.

Each property is bounded (at most ~100 examples, small sizes) so the file runs in seconds.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import BadImage, InvalidArgument, ZdmError
from common.images import decode_image, read_header
from common.masks import EDGE_TOLERANCE, EmptyMask, boxes_to_mask, load_mask
from protos.zdm.v1 import trainer_pb2
from services.trainer.spec import parse_job_spec

BOUNDED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = {"max_bytes": 200_000, "max_pixels": 250_000}


@st.composite
def images(draw) -> tuple[np.ndarray, str]:
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    channels = draw(st.sampled_from([1, 3, 4]))
    ext = draw(st.sampled_from([".png", ".bmp", ".tiff", ".jpg"]))
    deep = ext in (".png", ".tiff") and draw(st.booleans())
    if ext == ".jpg" and channels == 4:
        channels = 3
    dtype = np.uint16 if deep else np.uint8
    shape = (h, w) if channels == 1 else (h, w, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True), ext


@BOUNDED
@given(images())
def test_header_agrees_with_the_decoder(case) -> None:
    pixels, ext = case
    data = cv2.imencode(ext, pixels)[1].tobytes()
    header = read_header(data)
    assert (header.width, header.height) == (pixels.shape[1], pixels.shape[0])
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    assert header.alpha == (channels == 4)
    assert header.channels >= channels  # an upper bound of the buffer the decoder allocates
    assert header.sample_bytes == decoded.dtype.itemsize
    out = decode_image(data, allow_alpha=True)
    assert out.shape == (pixels.shape[0], pixels.shape[1], 3) and out.dtype == np.uint8


def _decodes_or_bad_image(data: bytes) -> None:
    try:
        out = decode_image(data, **LIMITS)
    except BadImage as exc:
        assert exc.message
    else:
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
        assert out.shape[0] * out.shape[1] <= LIMITS["max_pixels"]


@BOUNDED
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_bad_image(data: bytes) -> None:
    _decodes_or_bad_image(data)


@BOUNDED
@given(images(), st.data())
def test_mutated_images_decode_or_raise_bad_image(case, data) -> None:
    pixels, ext = case
    encoded = bytearray(cv2.imencode(ext, pixels)[1].tobytes())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(encoded)))
    _decodes_or_bad_image(bytes(encoded[:cut]))


@BOUNDED
@given(st.binary(max_size=2048), st.sampled_from(["binary", "color", "yolo", "xyxy", "auto"]))
def test_arbitrary_mask_bytes_load_or_raise_invalid_argument(data: bytes, fmt: str) -> None:
    try:
        mask = load_mask(data, fmt, 16, 20, max_bytes=10_000, max_pixels=10_000, max_boxes=50)
    except InvalidArgument as exc:
        assert exc.message
    else:
        assert mask.shape == (16, 20) and mask.dtype == bool and mask.any()


def _naive_boxes(boxes, height: int, width: int) -> np.ndarray:
    """One fill per box: the obvious definition the one-pass painting must match."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = max(0, math.floor(x0 + EDGE_TOLERANCE)), min(width, math.ceil(x1 - EDGE_TOLERANCE))
        r0, r1 = max(0, math.floor(y0 + EDGE_TOLERANCE)), min(height, math.ceil(y1 - EDGE_TOLERANCE))
        if c0 < c1 and r0 < r1:
            mask[r0:r1, c0:c1] = True
    return mask


coordinate = st.floats(-20, 60, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw) -> list[tuple[float, float, float, float]]:
    out = []
    for _ in range(draw(st.integers(0, 30))):
        x0, y0 = draw(coordinate), draw(coordinate)
        out.append((x0, y0, x0 + draw(st.floats(0.01, 50)), y0 + draw(st.floats(0.01, 50))))
    return out


@BOUNDED
@given(boxes(), st.integers(1, 40), st.integers(1, 40))
def test_one_pass_box_painting_equals_one_fill_per_box(bs, height: int, width: int) -> None:
    np.testing.assert_array_equal(boxes_to_mask(bs, height, width), _naive_boxes(bs, height, width))


unit = st.floats(0.0, 1.0, allow_nan=False)


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, 9), unit, unit, st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=1,
                max_size=20), st.integers(1, 50), st.integers(1, 50), st.sampled_from([" ", ",", "\t"]))
def test_yolo_text_marks_the_boxes_it_describes(rows, height: int, width: int, sep: str) -> None:
    text = "\n".join(sep.join(str(v) for v in row) for row in rows).encode()
    pixel_boxes = [((cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height)
                   for _, cx, cy, bw, bh in rows]
    expected = _naive_boxes(pixel_boxes, height, width)
    try:
        mask = load_mask(text, "yolo", height, width)
    except EmptyMask:
        assert not expected.any()
    else:
        np.testing.assert_array_equal(mask, expected)


# -- job specs ------------------------------------------------------------------------------------------
# Specs reach parse_job_spec as MessageToDict of a JobSpec (SubmitJob) or that dict read back from Redis
# (the worker): so the inputs are every JobSpec message, with any values its field types allow.

_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.one_of(st.sampled_from(["test_resnet", "efficientnet_lite0", "ds", "../etc",
                                                            "/etc", "ds/../../x", "", "def_front"]),
                                           st.text(max_size=40)),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=16),
}


def _field_values(field, depth: int):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return _SCALARS.get(field.type, st.none())


@st.composite
def messages(draw, descriptor, depth: int = 0):
    """A message of ``descriptor`` with a random subset of its fields set to random values of their types."""
    message = message_factory.GetMessageClass(descriptor)()
    if depth > 3:
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        values = _field_values(field, depth)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            entries = draw(st.dictionaries(_field_values(key, depth), _field_values(value, depth), max_size=3))
            for k, v in entries.items():
                getattr(message, field.name)[k] = v
        elif field.is_repeated:
            items = draw(st.lists(values, max_size=3))
            target = getattr(message, field.name)
            for item in items:
                target.add().CopyFrom(item) if field.type == FieldDescriptor.TYPE_MESSAGE else target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(draw(values))
        else:
            setattr(message, field.name, draw(values))
    return message


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("specs")
    (root / "ds").mkdir()
    return root


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(messages(trainer_pb2.JobSpec.DESCRIPTOR))
def test_job_specs_parse_or_raise_a_domain_error(data_root, message) -> None:
    spec = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for stored in (spec, json.loads(json.dumps(spec))):  # as submitted, and as the worker reads it back
        try:
            config = parse_job_spec(stored, [data_root], check_dataset=False)
        except ZdmError as exc:
            assert exc.message
        else:
            assert config.model_name and config.architecture and config.dataset_path
            assert config.recipe.epochs > 0 and config.recipe.batch_size > 0
