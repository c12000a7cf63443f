"""Build a published model from its manifest and weights (safetensors only, never pickles)."""

from __future__ import annotations

import torch
from torch import nn

from common.manifest import Manifest
from common.models.zoo import build_model
from common.registry import Registry


def load_published_verified(registry: Registry, manifest: Manifest, device: str = "cpu") -> tuple[nn.Module, str]:
    """The network of a published version in eval mode, weights loaded strictly after their SHA-256 was
    checked against the manifest; also returns that SHA-256 (of the file as read: a cache key).

    Raises:
        common.registry.IntegrityError: the weights file does not match the manifest.
    """
    model = build_model(manifest.architecture, len(manifest.classes), pretrained=False,
                        image_size=manifest.preprocessing.image_size)
    weights = registry.load_weights(manifest)
    model.load_state_dict(weights.state_dict, strict=True)
    model.eval()
    return model.to(torch.device(device)), weights.sha256


def load_published(registry: Registry, manifest: Manifest, device: str = "cpu") -> nn.Module:
    """:func:`load_published_verified` without the hash."""
    return load_published_verified(registry, manifest, device)[0]
