"""Architectures: the study's hand-written CNN and any timm model, with the input statistics each expects."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .errors import ShopeeError

CNN_ARCH = "cnn"
DEFAULT_ARCH = "efficientnet_b0"
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
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


def check_arch(arch: str) -> None:
    import timm

    if arch != CNN_ARCH and not timm.is_model(arch):
        raise ShopeeError(f"--arch {arch}: not a timm model name nor 'cnn'; see timm.list_models('{arch[:6]}*')")


def input_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the architecture's pretrained weights were trained with (ImageNet's for the CNN)."""
    if arch == CNN_ARCH:
        return IMAGENET_STATS
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or cfg.mean is None:
        return IMAGENET_STATS
    return tuple(cfg.mean), tuple(cfg.std)


def feature_extractor(model: nn.Module) -> nn.Module:
    """The part of a trained model that produces the pooled features its classifier sees."""
    if isinstance(model, HandCNN):
        return nn.Sequential(model.features, nn.Flatten())
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[1], nn.Sequential):
        return nn.Sequential(model[0], model[1][0], model[1][1])  # fastai vision_learner: body, concat pool, flatten
    raise ShopeeError(f"cannot find the body of a {type(model).__name__}; embed from --arch instead")
