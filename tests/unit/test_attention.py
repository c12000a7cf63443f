"""Attention maps (services/explainer/attention.py) on tiny timm ViT and Swin models."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from torch import Tensor, nn

from common.errors import InvalidArgument
from services.explainer.attention import attention_batch, attention_map, vit_attention_weights

torch.manual_seed(0)



def _sharpen(model: nn.Module) -> nn.Module:
    """Random-init attention is almost uniform; larger q/k weights and position biases make it peaky,
    so that a wrong scale, bias, mask or stitching shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("attn.qkv.weight"):
                param.mul_(6.0)
            elif name.endswith("relative_position_bias_table"):
                param.normal_(0.0, 1.0)
    return model.eval()


VIT = _sharpen(timm.create_model("test_vit", pretrained=False, num_classes=3))  # 160 px, 16 px patches, 6 blocks
X_VIT = torch.randn(2, 3, 160, 160)


def _swin(img_size: int) -> nn.Module:
    return _sharpen(timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16, depths=(2, 2, 2, 1),
        num_heads=(1, 2, 2, 2), img_size=img_size, num_classes=3,
    ))


SWIN = _swin(112)  # stage 0: 28x28, window 7, block 1 shifted by 3 (no padding)
SWIN_PADDED = _swin(64)  # stage 0: 16x16 padded to 21x21, block 1 shifted by 3


def vit_reference(model: nn.Module, x: Tensor, index: int, heads: list[int] | None) -> Tensor:
    """CLS->patch attention from timm's own non-fused path (softmax captured at attn_drop)."""
    model = copy.deepcopy(model)
    attn = model.blocks[index].attn
    attn.fused_attn = False
    store: dict[str, Tensor] = {}
    attn.attn_drop.register_forward_hook(lambda m, i, o: store.update(a=o))
    with torch.no_grad():
        model(x)
    weights = store["a"]
    heads = list(range(weights.shape[1])) if heads is None else heads
    grid = model.patch_embed.grid_size
    return weights[:, heads, 0, model.num_prefix_tokens:].mean(1).reshape(-1, *grid)


def test_vit_matches_timm_attention() -> None:
    maps, logits = attention_batch(VIT, X_VIT, "vit", 3)
    assert maps.max() > 2.5 * maps.mean()
    assert maps.shape == (2, 10, 10) and maps.dtype == torch.float32
    assert (maps >= 0).all()
    assert (maps.sum((1, 2)) <= 1 + 1e-6).all()  # CLS row sums to 1 including the CLS token itself
    torch.testing.assert_close(maps, vit_reference(VIT, X_VIT, 3, None), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logits, VIT(X_VIT))


def test_vit_block_spellings_heads_and_last_block() -> None:
    last = attention_map(VIT, X_VIT, "vit", -1)
    torch.testing.assert_close(last, attention_map(VIT, X_VIT, "vit", "blocks.5"))
    torch.testing.assert_close(last, attention_map(VIT, X_VIT, "vit", "5"))
    torch.testing.assert_close(last, vit_reference(VIT, X_VIT, 5, None), atol=1e-6, rtol=1e-5)
    head1 = attention_map(VIT, X_VIT, "vit", 2, heads=[1])
    torch.testing.assert_close(head1, vit_reference(VIT, X_VIT, 2, [1]), atol=1e-6, rtol=1e-5)
    both = attention_map(VIT, X_VIT, "vit", 2, heads=[0, 1])
    torch.testing.assert_close(both, attention_map(VIT, X_VIT, "vit", 2))


def test_vit_rows_are_softmax_and_qk_norm_is_applied() -> None:
    model = timm.create_model("test_vit", pretrained=False, num_classes=3, qk_norm=True).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_norm.weight.uniform_(0.5, 2.0)
            block.attn.k_norm.bias.uniform_(-1.0, 1.0)
    tokens = torch.randn(2, 101, model.embed_dim)
    weights = vit_attention_weights(model.blocks[1].attn, tokens)
    assert weights.shape == (2, model.blocks[1].attn.num_heads, 101, 101)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, weights.shape[1], 101))
    maps = attention_map(model, X_VIT, "vit", 1)
    torch.testing.assert_close(maps, vit_reference(model, X_VIT, 1, None), atol=1e-6, rtol=1e-5)


def swin_reference(model: nn.Module, x: Tensor, stage: int, index: int) -> Tensor:
    """Saliency from timm's own softmax (non-fused window attention), stitched with explicit loops."""
    blk = model.layers[stage].blocks[index]
    assert not blk.attn.fused_attn
    store: dict[str, Tensor] = {}
    handles = [blk.attn.softmax.register_forward_hook(lambda m, i, o: store.update(a=o)),
               blk.register_forward_pre_hook(lambda m, a: store.update(shape=a[0].shape))]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    batch, height, width, _ = store["shape"]
    received = store["a"].mean(1).mean(1)  # mean over heads, then over queries: B*nW x N
    wh, ww = blk.window_size
    sh, sw = blk.shift_size
    rows, cols = -(-height // wh), -(-width // ww)
    out = torch.zeros(batch, height, width)
    for b in range(batch):
        for wr in range(rows):
            for wc in range(cols):
                window = received[(b * rows + wr) * cols + wc]
                for t in range(wh * ww):
                    r, c = wr * wh + t // ww, wc * ww + t % ww  # position in the shifted, padded grid
                    if r < height and c < width:
                        out[b, (r + sh) % height, (c + sw) % width] = window[t]
    return out


@pytest.mark.parametrize(("model", "block", "where"), [
    (SWIN, "0.1", (0, 1)), (SWIN, "layers.2.blocks.0", (2, 0)), (SWIN, 6, (3, 0)),
    (SWIN_PADDED, "0.1", (0, 1)), (SWIN_PADDED, "1.1", (1, 1)),
])
def test_swin_matches_timm_softmax(model: nn.Module, block: str | int, where: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *model.patch_embed.img_size)
    maps, logits = attention_batch(model, x, "swin", block)
    expected = swin_reference(model, x, *where)
    assert maps.shape == expected.shape
    assert (maps >= 0).all()
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


def test_swin_shifted_windows_each_sum_to_one() -> None:
    x = torch.randn(1, 3, 112, 112)
    maps = attention_map(SWIN, x, "swin", "0.1")
    assert maps.shape == (1, 28, 28) and SWIN.layers[0].blocks[1].shift_size == (3, 3)
    unshifted = torch.roll(maps[0], shifts=(-3, -3), dims=(0, 1))  # back to the shifted window grid
    sums = unshifted.reshape(4, 7, 4, 7).sum((1, 3))
    torch.testing.assert_close(sums, torch.ones(4, 4))
    wrong = maps[0].reshape(4, 7, 4, 7).sum((1, 3))  # the unshifted grid does not sum to 1
    assert not torch.allclose(wrong, torch.ones(4, 4), atol=0.05)
    assert maps.max() > 1.3 * maps.mean()  # attention is peaky enough for the checks to mean something


def test_swin_heads_and_flat_index() -> None:
    x = torch.randn(1, 3, 64, 64)
    both = attention_map(SWIN_PADDED, x, "swin", "1.1")
    assert torch.equal(attention_map(SWIN_PADDED, x, "swin", 3), both)
    h0 = attention_map(SWIN_PADDED, x, "swin", "1.1", heads=[0])
    h1 = attention_map(SWIN_PADDED, x, "swin", "1.1", heads=[1])
    torch.testing.assert_close((h0 + h1) / 2, both)
    assert not torch.allclose(h0, h1)


def test_concurrent_calls_match_sequential() -> None:
    inputs = [torch.randn(1, 3, 160, 160) for _ in range(4)]
    sequential = [attention_map(VIT, x, "vit", 2) for x in inputs]
    barrier = threading.Barrier(4)

    def wait(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        barrier.wait(timeout=20)

    handle = VIT.blocks[1].register_forward_pre_hook(wait)
    try:
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(lambda x: attention_map(VIT, x, "vit", 2), inputs))
    finally:
        handle.remove()
    for seq, con in zip(sequential, concurrent, strict=True):
        torch.testing.assert_close(con, seq)
    assert not VIT.blocks[2].attn._forward_pre_hooks


def test_errors() -> None:
    cnn = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    with pytest.raises(InvalidArgument, match="VisionTransformer"):
        attention_map(cnn, torch.randn(1, 3, 64, 64), "vit", 0)
    with pytest.raises(InvalidArgument, match="SwinTransformer"):
        attention_map(VIT, X_VIT, "swin", "0.0")
    with pytest.raises(InvalidArgument, match="6 blocks"):
        attention_map(VIT, X_VIT, "vit", 6)
    with pytest.raises(InvalidArgument, match="index"):
        attention_map(VIT, X_VIT, "vit", "norm")
    with pytest.raises(InvalidArgument, match="head 2"):
        attention_map(VIT, X_VIT, "vit", 0, heads=[2])
    with pytest.raises(InvalidArgument, match=r"valid .*3\.0"):
        attention_map(SWIN, torch.randn(1, 3, 112, 112), "swin", "3.1")
    with pytest.raises(InvalidArgument, match="unknown attention kind"):
        attention_map(VIT, X_VIT, "deit", 0)  # type: ignore[arg-type]
