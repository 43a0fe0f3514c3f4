"""The study's baseline: a hand-written CNN."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import ShopeeError

CNN_CHANNELS = (16, 32, 64)
CNN_HIDDEN = 128


class HandCNN(nn.Module):
    """The study's baseline: 3 x (conv 3x3, ReLU, max-pool 2), flatten, linear, ReLU, linear."""

    def __init__(self, n_classes: int, size: int, channels: Sequence[int] = CNN_CHANNELS, hidden: int = CNN_HIDDEN):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        side = size // 2 ** len(channels)
        if side < 1:
            raise ShopeeError(f"--size {size} is too small for the cnn; use at least {2 ** len(channels)}")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.head(self.features(x))
