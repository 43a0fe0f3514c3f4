"""fastai pipeline pieces of our own: the image type that decodes like `images.load_rgb`, and the study's augmentation."""

from __future__ import annotations

from pathlib import Path

import torch
from fastai.vision.core import PILImage, TensorImage
from fasttransform import Transform

from .images import load_rgb

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's RandomGrayscale


class ShopeeImage(PILImage):
    """fastai's PILImage, opened through `load_rgb` (EXIF orientation, any mode to RGB, clear errors)."""

    @classmethod
    def create(cls, fn, **kwargs):
        if isinstance(fn, (str, Path)):
            return cls(load_rgb(fn))
        return super().create(fn, **kwargs)


class StudyAugment(Transform):
    """Each of grayscale, left-right flip and up-down flip applied to each image with probability `p` (training only)."""

    split_idx, order = 0, 20  # after IntToFloatTensor (10), before Normalize (99)

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def encodes(self, x: TensorImage) -> TensorImage:
        n = x.shape[0]
        pick = lambda: (torch.rand(n, 1, 1, 1, device=x.device) < self.p)  # noqa: E731
        gray = (x * x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
        x = torch.where(pick(), gray, x)
        x = torch.where(pick(), x.flip(-1), x)
        x = torch.where(pick(), x.flip(-2), x)
        return TensorImage(x)
