"""Helpers for the classifier's service tests: publish tiny models, train one briefly, encode images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.datasets.synthetic import CLASSES, generate_dataset
from common.images import decode_image, preprocess_batch
from common.manifest import Manifest, Preprocessing
from common.models.zoo import build_model
from common.redis_conn import connect
from common.registry import Registry
from common.settings import ClassifierSettings, CommonSettings
from protos.zdm.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from services.classifier.app import SERVICE_NAME, ClassifierApp
from services.classifier.model_store import BackendFactory

ARCH = "test_resnet"  # timm's tiny ResNet (~0.4 M parameters)
IMAGE_SIZE = 64
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]


def manifest(name: str) -> Manifest:
    return Manifest(
        name=name,
        architecture=ARCH,
        timm_name=ARCH,
        classes=list(CLASSES),
        defect_class="def_front",
        preprocessing=Preprocessing(image_size=IMAGE_SIZE, mean=MEAN, std=STD),
    )


def random_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(ARCH, len(CLASSES), pretrained=False, image_size=IMAGE_SIZE).state_dict()


def publish(registry: Registry, name: str, state: Mapping[str, torch.Tensor], aliases: list[str] | None = None) -> Manifest:
    return registry.publish(manifest(name), state, aliases=aliases)


def load_split(root: Path, split: str) -> tuple[list[bytes], np.ndarray]:
    """Encoded images of a split and their labels (class index), in a fixed order."""
    data, labels = [], []
    for label, cls in enumerate(CLASSES):
        for path in sorted((root / split / cls).glob("*.png")):
            data.append(path.read_bytes())
            labels.append(label)
    return data, np.array(labels)


def tensors(images: list[bytes]) -> np.ndarray:
    return preprocess_batch([decode_image(b) for b in images], IMAGE_SIZE, MEAN, STD)


def train_state(data_root: Path, *, epochs: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """A briefly trained tiny model (confident enough that low-precision backends meet the agreement bar)."""
    generate_dataset(data_root, train_per_class=40, test_per_class=100, size=IMAGE_SIZE, seed=seed)
    images, labels = load_split(data_root, "train")
    x = torch.from_numpy(tensors(images))
    y = torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = build_model(ARCH, len(CLASSES), pretrained=False, image_size=IMAGE_SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 16):
            idx = order[start : start + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.state_dict()


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def settings_for(root: Path, redis_url: str, prefix: str, **overrides: object) -> ClassifierSettings:
    """Settings of a test classifier: port 0, its own registry, cache and key prefix."""
    common = CommonSettings(
        redis_url=redis_url, key_prefix=prefix, registry=root / "registry", cache_dir=root / "cache", data_roots=[root]
    )
    values: dict[str, object] = {
        "port": 0,
        "max_workers": 8,
        "backend": "torch",
        "reload_poll_seconds": 300.0,
        "common": common,
        **overrides,
    }
    return ClassifierSettings(**values)


class Running:
    """A started ClassifierApp with a channel and stubs to it."""

    def __init__(
        self, settings: ClassifierSettings, redis_url: str, factory: BackendFactory | None = None, wait: bool = True
    ) -> None:
        self.app = ClassifierApp(settings, connect(redis_url), factory=factory)
        self.app.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = classifier_pb2_grpc.ClassifierStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if wait:
            assert self.app.store.wait_ready(120), "no model loaded"

    @property
    def registry(self) -> Registry:
        return self.app.registry

    def health_status(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status

    def close(self) -> None:
        self.channel.close()
        self.app.stop(0)


def delete_prefix(redis_url: str, prefix: str) -> None:
    client = connect(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def request(data: bytes, **fields: object) -> classifier_pb2.ClassifyRequest:
    model = fields.pop("model", None)
    req = classifier_pb2.ClassifyRequest(image=common_pb2.Image(data=data), **fields)  # type: ignore[arg-type]
    if model is not None:
        req.model.CopyFrom(model)  # type: ignore[arg-type]
    return req
