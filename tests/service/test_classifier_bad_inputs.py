"""A corpus of bad images: each gets INVALID_ARGUMENT with a useful message, and the service keeps answering."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos.zdm.v1 import classifier_pb2, common_pb2
from tests.service import classifier_support as cs

MAX_BYTES = 2_000_000


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (8-bit samples), so headers can lie and odd colour types can be made."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    body = _chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + header + body + _chunk(b"IEND", b"")


def gray_alpha_png(size: int = 16) -> bytes:
    row = b"\x00" + bytes([128, 255]) * size  # filter byte, then (gray, alpha) per pixel
    return raw_png(size, size, 4, row * size)


def _picture() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)


def corpus() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    picture = _picture()
    jpeg = cs.jpeg(picture)
    png = cs.png(picture)
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2 : len(png) // 2 + 64] = bytes(64)
    bmp = cv2.imencode(".bmp", picture)[1].tobytes()
    return {
        "zero bytes": b"",
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random bytes after a JPEG magic": b"\xff\xd8\xff" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated JPEG": jpeg[: len(jpeg) // 2],
        "JPEG header only": jpeg[:200],
        "corrupt PNG data": bytes(corrupt_png),
        "30000x30000 PNG header": raw_png(30000, 30000, 2),
        "PNG header of zero width": raw_png(0, 10, 2),
        "truncated BMP": bmp[:100],
        "gray + alpha PNG (2 channels)": gray_alpha_png(),
        "RGBA PNG (4 channels)": cs.png(np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)])),
        "GIF": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
        b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
        "text": b"hello, I am not an image",
        "too many bytes": b"\xff\xd8\xff" + bytes(MAX_BYTES),
    }


def good_images() -> dict[str, bytes]:
    picture = _picture()
    gray = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
    return {
        "JPEG colour": cs.jpeg(picture),
        "JPEG gray": cs.jpeg(gray),
        "PNG colour": cs.png(picture),
        "PNG gray 16-bit": cs.png(gray.astype(np.uint16) * 257),
        "BMP": cv2.imencode(".bmp", picture)[1].tobytes(),
        "TIFF": cv2.imencode(".tiff", gray)[1].tobytes(),
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[cs.Running]:
    root: Path = tmp_path_factory.mktemp("bad-inputs")
    prefix = f"zdmtest:bad-{root.name}"
    settings = cs.settings_for(root, redis_url, prefix, max_image_bytes=MAX_BYTES, max_image_pixels=4_000_000)
    cs.publish(cs.Registry(settings.common.registry), "casting", cs.random_state(0))
    running = cs.Running(settings, redis_url)
    yield running
    running.close()
    cs.delete_prefix(redis_url, prefix)


@pytest.mark.parametrize("kind", list(corpus()))
def test_bad_image_is_invalid_argument_and_service_keeps_answering(service: cs.Running, kind: str) -> None:
    data = corpus()[kind]
    with pytest.raises(grpc.RpcError) as err:
        service.stub.Classify(cs.request(data), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, err.value.details())
    assert "image" in err.value.details() and len(err.value.details()) > 20
    ok = service.stub.Classify(cs.request(good_images()["JPEG colour"]), timeout=30)
    assert ok.predicted_class in ("def_front", "ok_front")


def test_messages_say_what_is_wrong(service: cs.Running) -> None:
    def details(data: bytes, name: str = "") -> str:
        req = classifier_pb2.ClassifyRequest(image=common_pb2.Image(data=data, name=name))
        with pytest.raises(grpc.RpcError) as err:
            service.stub.Classify(req, timeout=30)
        return err.value.details()

    bad = corpus()
    assert "empty" in details(bad["zero bytes"], "frame-17") and "frame-17" in details(bad["zero bytes"], "frame-17")
    assert "30000x30000" in details(bad["30000x30000 PNG header"])
    assert "unsupported format" in details(bad["GIF"])
    assert "too large" in details(bad["too many bytes"])
    assert "truncated" in details(bad["truncated JPEG"])


def test_good_formats_are_accepted(service: cs.Running) -> None:
    for kind, data in good_images().items():
        verdict = service.stub.Classify(cs.request(data), timeout=30)
        assert len(verdict.probabilities) == 2, kind


def test_stream_reports_bad_items_and_carries_on(service: cs.Running) -> None:
    bad = list(corpus().values())
    good = good_images()["PNG colour"]
    requests = []
    for i, data in enumerate(bad):
        requests.append(cs.request(data, request_id=f"bad{i}"))
        requests.append(cs.request(good, request_id=f"good{i}"))
    verdicts = list(service.stub.ClassifyStream(iter(requests), timeout=60))
    assert [v.request_id for v in verdicts] == [r.request_id for r in requests]
    for v in verdicts:
        if v.request_id.startswith("bad"):
            assert v.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and v.error.message
        else:
            assert not v.HasField("error") and len(v.probabilities) == 2
