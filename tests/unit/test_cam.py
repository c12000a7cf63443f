"""CAM family (services/explainer/cam.py) against a .backward() reference, plus heatmap post-processing."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import timm
import torch
from torch import Tensor, nn

from common.errors import InvalidArgument
from services.explainer import heatmap
from services.explainer.cam import SpatialLayout, explain_batch, to_nchw, valid_layers
from tests.cam_support import reference_activation_and_gradient

torch.manual_seed(0)


class Sync(nn.Module):
    """Identity that can hold threads at a barrier, to force concurrent forwards to interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier: threading.Barrier | None = None
        self.seen: list[tuple[bool, bool]] = []  # (grad enabled, inference mode) at each pass

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        if self.barrier is not None:
            self.barrier.wait(timeout=20)
        return x


class Tiny(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            Sync(),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.unused = nn.Conv2d(8, 8, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _tiny() -> Tiny:
    model = Tiny()
    bn = model.features[4]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


MODEL = _tiny()
X = torch.randn(5, 3, 8, 8)


def reference_cam(model: nn.Module, x: Tensor, layer: str, target: list[int], method: str) -> Tensor:
    """Straightforward Grad-CAM / Grad-CAM++: hooks, .backward(), per-channel loops in float64."""
    acts, grads = (t.numpy() for t in reference_activation_and_gradient(model, x, layer, target))
    maps = []
    for a_n, g_n in zip(acts, grads, strict=True):
        cam = np.zeros(a_n.shape[1:])
        for a, g in zip(a_n, g_n, strict=True):
            if method == "gradcam":
                weight = g.mean()
            else:
                denominator = 2 * g**2 + a.sum() * g**3
                alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
                weight = (alpha * np.maximum(g, 0)).sum()
            cam += weight * a
        maps.append(np.maximum(cam, 0))
    return torch.from_numpy(np.stack(maps)).float()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer", ["features.3", "features.4", "features.0"])
def test_matches_reference(method: str, layer: str) -> None:
    target = [0, 1, 2, 3, 1]
    cams, logits = explain_batch(MODEL, X, layer, method, target)
    expected = reference_cam(MODEL, X, layer, target, method)
    assert cams.dtype == torch.float32 and cams.shape == expected.shape == (5, 8, 8)
    assert expected.abs().max() > 0
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, MODEL(X).detach())


def test_default_target_is_prediction() -> None:
    cams, logits = explain_batch(MODEL, X, "features.3", "gradcam", None)
    predicted = logits.argmax(1).tolist()
    torch.testing.assert_close(cams, reference_cam(MODEL, X, "features.3", predicted, "gradcam"),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_batch_equals_single_calls(method: str) -> None:
    target = [3, 2, 1, 0, 0]
    batch, _ = explain_batch(MODEL, X, "features.3", method, target)
    singles = torch.cat([explain_batch(MODEL, X[i:i + 1], "features.3", method, [t])[0]
                         for i, t in enumerate(target)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_model_untouched(method: str) -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    explain_batch(model, X, "features.4", method, None)  # BN followed by an in-place ReLU
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training and not any(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.features[0]._forward_hooks and not model.features[4]._forward_hooks


def test_frozen_parameters_still_work() -> None:
    model = _tiny()
    model.requires_grad_(False)
    cams, _ = explain_batch(model, X, "features.3", "gradcam", [1] * 5)
    torch.testing.assert_close(cams, reference_cam(_copy_trainable(model), X, "features.3", [1] * 5, "gradcam"),
                               atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def _copy_trainable(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.requires_grad_(True)
    return clone


def test_grad_off_below_layer_and_eigencam_in_inference_mode() -> None:
    model = _tiny()
    sync = model.features[1]
    explain_batch(model, X, "features.3", "gradcam", None)
    assert sync.seen == [(False, False)]  # no graph is built below the target layer
    sync.seen.clear()
    explain_batch(model, X, "features.0", "gradcam", None)
    assert sync.seen == [(True, False)]  # above the target layer autograd is on
    sync.seen.clear()
    explain_batch(model, X, "features.3", "eigencam", None)
    assert sync.seen == [(False, True)]
    expected = reference_cam(model, X, "features.3", [0] * 5, "gradcam")
    for mode in (torch.inference_mode, torch.no_grad):  # callers in these modes still get gradients
        with mode():
            cams, _ = explain_batch(model, X, "features.3", "gradcam", [0] * 5)
        torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-5)


def test_eigencam_matches_svd() -> None:
    cams, _ = explain_batch(MODEL, X, "features.4", "eigencam", None)  # signed (BatchNorm) activations
    acts = MODEL.features[:5](X).detach().double()
    for n in range(X.shape[0]):
        matrix = acts[n].reshape(8, -1).T.numpy()
        centred = matrix - matrix.mean(0)
        _, _, vh = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vh[0]
        if np.corrcoef(projection, matrix.mean(1))[0, 1] < 0:
            projection = -projection
        expected = np.maximum(projection, 0).reshape(8, 8)
        np.testing.assert_allclose(cams[n].numpy(), expected, atol=1e-5, rtol=1e-4)
        assert expected.max() > 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_concurrent_calls_match_sequential(method: str) -> None:
    model = _tiny()
    inputs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    targets = [[i % 4, (i + 1) % 4] for i in range(4)]
    sequential = [explain_batch(model, x, "features.3", method, t) for x, t in zip(inputs, targets, strict=True)]
    model.features[1].barrier = threading.Barrier(4)  # all four forwards are in flight at once

    def run(i: int) -> tuple[Tensor, Tensor]:
        return explain_batch(model, inputs[i], "features.3", method, targets[i])

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, range(4)))
    for (cam_s, logit_s), (cam_c, logit_c) in zip(sequential, concurrent, strict=True):
        torch.testing.assert_close(cam_c, cam_s)
        torch.testing.assert_close(logit_c, logit_s)
    assert not model.features[3]._forward_hooks
    assert all(p.grad is None for p in model.parameters())


class RegionLogit(nn.Module):
    """Two-channel identity layer; logit 0 = sum of channel 0 over a region, logit 1 = sum of channel 1."""

    def __init__(self, region: Tensor) -> None:
        super().__init__()
        self.layer = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(2)[:, :, None, None])
        self.register_buffer("region", region.float())

    def forward(self, x: Tensor) -> Tensor:
        a = self.layer(x)
        return torch.stack([(a[:, 0] * self.region).sum((1, 2)), a[:, 1].sum((1, 2))], dim=1)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_localisation_in_constructed_region(method: str) -> None:
    region = torch.zeros(12, 12, dtype=torch.bool)
    region[2:6, 6:10] = True
    x = torch.rand(1, 2, 12, 12) * 0.1
    x[0, 0, 3, 7] = 1.0  # channel 0 evidence inside the region
    x[0, 1, 9, 2] = 2.0  # brighter evidence outside, in the channel class 0 ignores
    model = RegionLogit(region).eval()
    cams, _ = explain_batch(model, x, "layer", method, [0])
    row, col = divmod(int(cams[0].argmax()), 12)
    assert region[row, col] and (row, col) == (3, 7)
    cams, _ = explain_batch(model, x, "layer", method, [1])
    assert divmod(int(cams[0].argmax()), 12) == (9, 2)


def test_token_layout_reshape_order() -> None:
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix + 2x3 patches
    out = to_nchw(tokens, SpatialLayout("tokens", prefix_tokens=1), (20, 30))
    assert out.shape == (2, 3, 2, 3)
    assert torch.equal(out[1, 2, 1, 0], tokens[1, 1 + 1 * 3 + 0, 2])
    nhwc = torch.randn(2, 4, 5, 3)
    assert torch.equal(to_nchw(nhwc, SpatialLayout("nhwc"), (4, 5)), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(InvalidArgument, match="grid"):
        to_nchw(tokens, SpatialLayout("tokens", prefix_tokens=1, grid=(3, 3)), (20, 30))


def test_gradcam_on_vit_block_tokens() -> None:
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 160, 160)
    cams, logits = explain_batch(vit, x, "blocks.4", "gradcam", None)
    assert cams.shape == (2, 10, 10) and logits.shape == (2, 3)
    assert (cams >= 0).all() and cams.amax() > 0
    # an explicit layout gives the same as the inferred one (timm's num_prefix_tokens)
    again, _ = explain_batch(vit, x, "blocks.4", "gradcam", None, layout=SpatialLayout("tokens", 1))
    torch.testing.assert_close(again, cams)
    assert all(p.grad is None for p in vit.parameters())


def test_gradcam_on_swin_nhwc_block() -> None:
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16,
                             depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), img_size=112, num_classes=3).eval()
    x = torch.randn(2, 3, 112, 112)
    cams, _ = explain_batch(swin, x, "layers.1.blocks.1", "gradcam++", [0, 2])
    assert cams.shape == (2, 14, 14) and (cams >= 0).all() and cams.amax() > 0
    nchw, _ = explain_batch(swin, x, "layers.1.blocks.1", "gradcam++", [0, 2], layout=SpatialLayout("nchw"))
    assert nchw.shape == (2, 14, 32)  # the wrong layout reads channels as rows: inference matters
    with pytest.raises(InvalidArgument, match="maps for 2 images"):
        explain_batch(swin, x, "layers.1.blocks.1.attn", "gradcam", None)


def test_errors() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown layer 'features\.33'.*did you mean.*features\.3") as err:
        explain_batch(MODEL, X, "features.33", "gradcam", None)
    assert "head" in err.value.message and "features" in err.value.message
    with pytest.raises(InvalidArgument, match="unknown CAM method"):
        explain_batch(MODEL, X, "features.3", "scorecam", None)
    with pytest.raises(InvalidArgument, match="not in"):
        explain_batch(MODEL, X, "features.3", "gradcam", [0, 1, 2, 3, 4])
    with pytest.raises(InvalidArgument, match="5 targets|targets for a batch"):
        explain_batch(MODEL, X, "features.3", "gradcam", [0])
    with pytest.raises(InvalidArgument, match="did not run"):
        explain_batch(MODEL, X, "unused", "gradcam", None)
    with pytest.raises(InvalidArgument, match="N x C x H x W"):
        explain_batch(MODEL, X[0], "features.3", "gradcam", None)
    assert not MODEL.unused._forward_hooks
    names = valid_layers(MODEL)
    assert "features" in names and "features.3" in names and "" not in names


# --- heatmap post-processing -------------------------------------------------------------------


def test_normalize() -> None:
    maps = torch.tensor([[[0.0, 2.0], [4.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    by_max = heatmap.normalize(maps, "max")
    torch.testing.assert_close(by_max[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(by_max[1], torch.zeros(2, 2))
    minmax = heatmap.normalize(maps[0], "minmax")
    torch.testing.assert_close(minmax, torch.tensor([[0.2, 0.6], [1.0, 0.0]]))
    with pytest.raises(InvalidArgument):
        heatmap.normalize(maps, "zscore")  # type: ignore[arg-type]


def test_resize_threshold_and_encodings() -> None:
    small = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    big = heatmap.to_image_size(small, 4, 8)
    assert big.shape == (4, 8) and big[:, 0].eq(0).all() and big[:, -1].eq(1).all()
    assert heatmap.to_image_size(small[None].repeat(3, 1, 1), 4, 8).shape == (3, 4, 8)
    mask = heatmap.threshold(big, 0.5)
    assert mask.dtype == torch.bool and torch.equal(mask, big > 0.5)

    data = heatmap.heatmap_bytes(big)
    assert len(data) == 4 * 8 * 2
    assert np.frombuffer(data, dtype="<f2")[7] == np.float16(big[0, 7].item())
    np.testing.assert_allclose(heatmap.heatmap_from_bytes(data, 4, 8), big.numpy(), atol=1e-3)

    png = heatmap.mask_png(mask)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.ndim == 2 and np.array_equal(decoded > 0, mask.numpy())

    rgb = np.zeros((4, 8, 3), dtype=np.uint8)
    overlay = cv2.imdecode(np.frombuffer(heatmap.overlay_png(rgb, small), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (4, 8, 3)
    assert overlay[0, -1, 2] > overlay[0, -1, 0]  # hot = red in jet (BGR: channel 2)
    assert overlay[0, 0, 0] > overlay[0, 0, 2]  # cold = blue
    with pytest.raises(InvalidArgument):
        heatmap.overlay_png(rgb.astype(np.float32), small)
