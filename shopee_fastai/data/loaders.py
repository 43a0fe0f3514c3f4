"""fastai DataLoaders for label groups: the DataBlock, its augmentations, and the image type that decodes with
`images.load_rgb`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.transforms import Categorize, ColReader, ColSplitter, Normalize
from fastai.vision.augment import Hue, Resize, Saturation, aug_transforms
from fastai.vision.core import PILImage, TensorImage
from fastai.vision.data import ImageBlock
from fasttransform import Transform
from PIL import Image

from ..config import BS, SEED, SIZE, Aug
from .images import load_rgb, upright_rgb
from .split import SPLIT, VALID
from .table import LABEL, PATH

IS_VALID = "is_valid"
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's RandomGrayscale
# Aug.strong: wider zoom, rotation and warp, stronger lighting, plus saturation and hue
STRONG_AUG = {"max_rotate": 15.0, "max_zoom": 1.3, "max_warp": 0.3, "max_lighting": 0.4, "p_lighting": 0.9}
STRONG_COLOUR = {"saturation": 0.3, "hue": 0.05}


class GroupLabel(Categorize):
    """fastai's Categorize, except that a float vector decodes as itself: `predict` on an embedding model returns
    its embedding, where a vocabulary lookup of its values would name nonsense groups."""

    def decodes(self, o):
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            return o
        return super().decodes(o)


class ShopeeImage(PILImage):
    """fastai's PILImage, opened through `load_rgb` (EXIF orientation, any mode to RGB, clear errors)."""

    @classmethod
    def create(cls, fn: Path | str | torch.Tensor | np.ndarray | bytes | Image.Image, **kwargs):
        """The annotation is the input type the DataBlock records, which `predict` and `test_dl` check items
        against: the types fastai's own `PILImage.create` takes, so a path, a `PILImage` or a PIL image predicts."""
        if isinstance(fn, cls):
            return fn
        if isinstance(fn, (str, Path)):
            return cls(load_rgb(fn))
        if isinstance(fn, Image.Image):
            return cls(upright_rgb(fn))
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


@dataclass(frozen=True)
class LoaderConfig:
    size: int = SIZE
    bs: int = BS
    aug: Aug = Aug.fastai
    workers: int | None = None  # None: 0 on CPU (measured faster), fastai's default (one per core) with CUDA
    seed: int = SEED


def batch_augmentations(aug: Aug) -> list:
    """The batch transforms for `--aug`: fastai's `aug_transforms` (default or stronger), the study's flips and
    grayscale, or none."""
    aug = Aug.parse(aug, "--aug")
    if aug == Aug.fastai:
        return aug_transforms()
    if aug == Aug.strong:
        return aug_transforms(**STRONG_AUG, xtra_tfms=[Saturation(STRONG_COLOUR["saturation"]), Hue(STRONG_COLOUR["hue"])])
    if aug == Aug.study:
        return [StudyAugment()]
    return []


def make_dataloaders(train_valid: pd.DataFrame, stats: tuple[Sequence[float], Sequence[float]], cfg: LoaderConfig,
                     vocab: Sequence[str] | None = None):
    """fastai DataLoaders from rows carrying `path`, `label_group` and `split` (train/valid).

    Normalisation with the model's own statistics is part of the batch pipeline for every architecture,
    so it travels with the exported learner and applies to from-scratch models too.
    """
    block = DataBlock(
        blocks=(ImageBlock(cls=ShopeeImage), TransformBlock(type_tfms=GroupLabel(vocab=vocab))),
        get_x=ColReader(PATH),
        get_y=ColReader(LABEL),
        splitter=ColSplitter(IS_VALID),
        item_tfms=Resize(cfg.size),
        batch_tfms=[*batch_augmentations(cfg.aug), Normalize.from_stats(*stats)],
    )
    frame = train_valid.assign(**{IS_VALID: train_valid[SPLIT].eq(VALID)})
    kwargs = {} if cfg.workers is None else {"num_workers": cfg.workers}
    if torch.cuda.is_available():
        kwargs["pin_memory"] = True  # page-locked batches copy to the GPU asynchronously
    elif cfg.workers is None:
        # On CPU, loader processes take cores from the network, which already uses them all; loading in
        # the main process was faster at every size measured (bench/train_speed.py --workers).
        kwargs["num_workers"] = 0
    return block.dataloaders(frame, bs=cfg.bs, seed=cfg.seed, **kwargs)

