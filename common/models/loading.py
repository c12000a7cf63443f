"""Build a published model from its manifest and weights (safetensors only, never pickles)."""

from __future__ import annotations

import torch
from torch import nn

from common.manifest import Manifest
from common.models.zoo import build_model
from common.registry import Registry


def load_published(registry: Registry, manifest: Manifest, device: str = "cpu") -> nn.Module:
    """The network of a published version in eval mode, weights loaded strictly."""
    model = build_model(manifest.architecture, len(manifest.classes), pretrained=False,
                        image_size=manifest.preprocessing.image_size)
    state = registry.load_state_dict(manifest.name, manifest.version)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(torch.device(device))
