"""Attention maps of timm vision transformers (ViT / DeiT / DINO, and Swin).

timm's attention uses fused ``scaled_dot_product_attention``, so the weights never exist as a tensor.
We hook the inputs of the chosen attention module (for the calling thread only, as in
:mod:`services.explainer.cam`) and recompute ``softmax(q k^T * scale [+ bias + mask])`` from the
module's own projections. The model is not modified.

* ViT: the class token's attention to the patch tokens in ``blocks[i]``, averaged over heads,
  on the patch grid.
* Swin: window attention in ``layers[stage].blocks[block]``. Each token's saliency is the mean
  attention it receives from the queries of its window (relative position bias and shift mask
  included), so every window's saliencies sum to 1: the map shows contrast within windows. Windows
  are stitched back and the cyclic shift undone, giving a map on the stage's ``H x W`` grid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from common.errors import InvalidArgument

AttentionKind = Literal["vit", "swin"]


class _InputRecorder:
    """A forward pre-hook that keeps the positional and keyword inputs of this thread's last call."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.args: tuple[Any, ...] | None = None
        self.kwargs: dict[str, Any] = {}

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if threading.get_ident() == self.owner:
            self.args, self.kwargs = args, dict(kwargs)
        return None


@contextmanager
def _recording_inputs(*modules: nn.Module) -> Iterator[list[_InputRecorder]]:
    recorders = [_InputRecorder() for _ in modules]
    handles = [m.register_forward_pre_hook(r, with_kwargs=True) for m, r in zip(modules, recorders, strict=True)]
    try:
        yield recorders
    finally:
        for handle in handles:
            handle.remove()


def attention_map(
    model: nn.Module, x: Tensor, kind: AttentionKind, block: str | int, heads: list[int] | None = None
) -> Tensor:
    """Attention saliency ``N x h x w`` (float32, non-negative) at the token grid of the chosen block.

    Args:
        model: a timm ``VisionTransformer`` (``kind="vit"``) or ``SwinTransformer`` (``kind="swin"``)
            in eval mode.
        x: preprocessed images ``N x C x H x W``.
        kind: ``"vit"`` or ``"swin"`` (from the architecture's spec).
        block: ViT: block index (``6``, ``-1`` for the last, ``"6"`` or ``"blocks.6"``); Swin:
            ``"stage.block"`` (``"2.1"`` or ``"layers.2.blocks.1"``, 0-based) or a flat index over
            all blocks of all stages.
        heads: head indices to average; ``None`` averages all heads.
    """
    return attention_batch(model, x, kind, block, heads)[0]


def attention_batch(
    model: nn.Module, x: Tensor, kind: AttentionKind, block: str | int, heads: list[int] | None = None
) -> tuple[Tensor, Tensor]:
    """Like :func:`attention_map`, also returning the (detached) logits of the same forward."""
    runner = _KINDS.get(kind)
    if runner is None:
        raise InvalidArgument(f"unknown attention kind {kind!r}; choose one of {', '.join(_KINDS)}")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidArgument("input must be a non-empty N x C x H x W tensor")
    maps, logits = runner(model, x, block, heads)
    return maps.float().contiguous(), logits


def _vit(model: nn.Module, x: Tensor, block: str | int, heads: list[int] | None) -> tuple[Tensor, Tensor]:
    if not isinstance(model, VisionTransformer):
        raise InvalidArgument(f"ViT attention needs a timm VisionTransformer, not {type(model).__name__}")
    if getattr(model, "cls_token", None) is None:
        raise InvalidArgument("this ViT has no class token, so there is no CLS-to-patch attention")
    blocks = model.blocks
    index = _vit_block_index(block, len(blocks))
    attn = blocks[index].attn
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "scale")):
        raise InvalidArgument(f"block {index} has no standard multi-head attention ({type(attn).__name__})")
    with _recording_inputs(attn) as (recorder,), torch.inference_mode():
        logits = model(x)
        if recorder.args is None:
            raise InvalidArgument(f"block {index} did not run in the forward pass")
        tokens = recorder.args[0]
        weights = vit_attention_weights(attn, tokens)  # N x heads x T x T
        weights = weights[:, _head_index(heads, weights.shape[1])].mean(dim=1)
        prefix = int(model.num_prefix_tokens)
        cls_to_patches = weights[:, 0, prefix:]
        h, w = _vit_grid(model, x, cls_to_patches.shape[1])
        maps = cls_to_patches.reshape(-1, h, w).clone()
    return maps, logits.clone()


def vit_attention_weights(attn: nn.Module, tokens: Tensor) -> Tensor:
    """``softmax(q k^T * scale)`` of a timm ``Attention`` for its input ``tokens`` (``N x T x D``)."""
    n, t, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(n, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q = attn.q_norm(q) if hasattr(attn, "q_norm") else q
    k = attn.k_norm(k) if hasattr(attn, "k_norm") else k
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _swin(model: nn.Module, x: Tensor, block: str | int, heads: list[int] | None) -> tuple[Tensor, Tensor]:
    if not isinstance(model, SwinTransformer):
        raise InvalidArgument(f"Swin attention needs a timm SwinTransformer, not {type(model).__name__}")
    stage, index = _swin_block_index(model, block)
    blk = model.layers[stage].blocks[index]
    with _recording_inputs(blk, blk.attn) as (block_rec, attn_rec), torch.inference_mode():
        logits = model(x)
        if block_rec.args is None or attn_rec.args is None:
            raise InvalidArgument(f"Swin stage {stage} block {index} did not run in the forward pass")
        batch, height, width, _ = block_rec.args[0].shape
        windows = attn_rec.args[0]
        mask = attn_rec.kwargs.get("mask", attn_rec.args[1] if len(attn_rec.args) > 1 else None)
        weights = swin_window_attention(blk.attn, windows, mask)  # B*nW x heads x N x N
        weights = weights[:, _head_index(heads, weights.shape[1])].mean(dim=1)
        received = weights.mean(dim=1)  # B*nW x N: mean over the window's queries
        maps = _stitch_windows(received, batch, (height, width), tuple(blk.window_size), tuple(blk.shift_size))
    return maps, logits.clone()


def swin_window_attention(attn: nn.Module, windows: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax attention of a timm ``WindowAttention`` for its input (``B*nW x N x C``) and shift mask."""
    b_, n, _ = windows.shape
    qkv = attn.qkv(windows).reshape(b_, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    table, index = attn.relative_position_bias_table, attn.relative_position_index
    bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    scores = scores + bias.unsqueeze(0)
    if mask is not None:
        num_windows = mask.shape[0]
        scores = scores.view(-1, num_windows, attn.num_heads, n, n) + mask[None, :, None].to(scores.dtype)
        scores = scores.view(-1, attn.num_heads, n, n)
    return scores.softmax(dim=-1)


def _stitch_windows(
    values: Tensor, batch: int, size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """Per-window token values ``B*nW x (wh*ww)`` back to ``B x H x W``: un-pad, undo the cyclic shift."""
    height, width = size
    wh, ww = window
    rows, cols = -(-height // wh), -(-width // ww)
    grid = values.reshape(batch, rows, cols, wh, ww).permute(0, 1, 3, 2, 4).reshape(batch, rows * wh, cols * ww)
    grid = grid[:, :height, :width]
    if any(shift):
        grid = torch.roll(grid, shifts=shift, dims=(1, 2))
    return grid


def _head_index(heads: list[int] | None, count: int) -> list[int]:
    if heads is None:
        return list(range(count))
    if not heads:
        raise InvalidArgument("heads must be None (all heads) or a non-empty list")
    for head in heads:
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < count:
            raise InvalidArgument(f"head {head!r} is not in [0, {count})")
    return list(heads)


def _vit_block_index(block: str | int, count: int) -> int:
    text = str(block).strip()
    if text.startswith("blocks."):
        text = text[len("blocks."):]
    try:
        index = int(text)
    except ValueError:
        raise InvalidArgument(f"ViT block must be an index like 6, -1 or 'blocks.6', not {block!r}") from None
    if not -count <= index < count:
        raise InvalidArgument(f"ViT block {index} out of range: the model has {count} blocks (0..{count - 1})")
    return index % count


def _swin_block_index(model: nn.Module, block: str | int) -> tuple[int, int]:
    depths = [len(stage.blocks) for stage in model.layers]
    valid = ", ".join(f"{s}.{b}" for s, d in enumerate(depths) for b in range(d))
    text = str(block).strip()
    parts = text.replace("layers.", "").replace("blocks.", "").split(".")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        flat = [(s, b) for s, d in enumerate(depths) for b in range(d)]
        if -len(flat) <= numbers[0] < len(flat):
            return flat[numbers[0]]
    elif len(numbers) == 2:
        stage, index = numbers
        if 0 <= stage < len(depths) and 0 <= index < depths[stage]:
            return stage, index
    raise InvalidArgument(f"Swin block {block!r} does not exist; valid (stage.block, 0-based): {valid}")


def _vit_grid(model: VisionTransformer, x: Tensor, patches: int) -> tuple[int, int]:
    embed = model.patch_embed
    feat_size: Callable[[tuple[int, int]], tuple[int, int]] | None = getattr(embed, "dynamic_feat_size", None)
    h, w = feat_size((int(x.shape[2]), int(x.shape[3]))) if feat_size else tuple(embed.grid_size)
    if h * w != patches:
        h, w = tuple(embed.grid_size)
    if h * w != patches:
        raise InvalidArgument(f"{patches} patch tokens do not match the patch grid {h}x{w}")
    return int(h), int(w)


_KINDS: dict[str, Callable[[nn.Module, Tensor, str | int, list[int] | None], tuple[Tensor, Tensor]]] = {
    "vit": _vit,
    "swin": _swin,
}

class AttentionMethod:
    """Attention maps as an explanation method (see ``cam.ExplanationMethod``): the layer names a
    transformer block, the kind comes from the architecture's spec. Class-agnostic."""

    name = "attention"
    family = "attention"
    needs_layer = True
    class_agnostic = True

    def maps(self, model: nn.Module, x: Tensor, request: Any) -> tuple[Tensor, Tensor]:
        if request.attention is None:
            raise InvalidArgument("this architecture has no attention maps")
        return attention_batch(model, x, request.attention, request.layer, request.heads)


ATTENTION = AttentionMethod()

__all__ = [
    "ATTENTION",
    "AttentionMethod",
    "attention_batch",
    "attention_map",
    "swin_window_attention",
    "vit_attention_weights",
]
