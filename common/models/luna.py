"""Luna: the thesis's small CNN trained from scratch (a 2D adaptation of the LUNA nodule classifier).

BatchNorm2d(3) -> 4 x [conv3x3, ReLU, conv3x3, ReLU, maxpool2] with 8, 16, 32, 64 channels -> linear.
At 300 x 300 px and 2 classes it has 115,088 parameters (73,614 in the convolutions and the input
BatchNorm, 41,474 in the linear head). The linear layer's input size depends on the image size, so
a Luna built for one size cannot take another.
"""

from __future__ import annotations

import torch
from torch import nn

LUNA_CHANNELS: tuple[int, ...] = (8, 16, 32, 64)
LUNA_INPUT_SIZE = 300


class LunaBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> maxpool2 (halves the side, rounding down)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=True)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


class Luna(nn.Module):
    """The thesis's Luna; `block4.maxpool` is its Grad-CAM layer and `head_linear` its head."""

    def __init__(self, num_classes: int = 2, image_size: int = LUNA_INPUT_SIZE, in_channels: int = 3) -> None:
        super().__init__()
        if image_size < 2 ** len(LUNA_CHANNELS):
            raise ValueError(f"Luna needs images of at least {2 ** len(LUNA_CHANNELS)} px, got {image_size}")
        self.image_size = image_size
        self.tail_batchnorm = nn.BatchNorm2d(in_channels)
        self.block1 = LunaBlock(in_channels, LUNA_CHANNELS[0])
        self.block2 = LunaBlock(LUNA_CHANNELS[0], LUNA_CHANNELS[1])
        self.block3 = LunaBlock(LUNA_CHANNELS[1], LUNA_CHANNELS[2])
        self.block4 = LunaBlock(LUNA_CHANNELS[2], LUNA_CHANNELS[3])
        side = image_size
        for _ in LUNA_CHANNELS:
            side //= 2
        self.head_linear = nn.Linear(LUNA_CHANNELS[-1] * side * side, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tail_batchnorm(x)
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head_linear(torch.flatten(x, 1))
