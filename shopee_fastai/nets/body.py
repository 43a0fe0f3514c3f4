"""timm bodies: which networks exist, what input statistics they expect, and where to cut them.

A fastai `vision_learner` model is `Sequential(body, head)`. Cutting it lets the features recipe run the
lower body once and train the top stages with the head (training/features.py), and lets embeddings use
what the head sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import CNN_ARCH
from ..errors import ShopeeError
from .cnn import HandCNN

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_TIMM_TOP = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")  # EfficientNet / MobileNet layout in timm


def check_arch(arch: str) -> None:
    import timm  # ~1 s: the torch predict path imports this module and may never build a timm model

    if arch != CNN_ARCH and not timm.is_model(arch):
        raise ShopeeError(f"--arch {arch}: not a timm model name nor 'cnn'; see timm.list_models('{arch[:6]}*')")


def input_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the architecture's pretrained weights were trained with (ImageNet's for the CNN)."""
    if arch == CNN_ARCH:
        return IMAGENET_STATS
    from timm.models import get_pretrained_cfg  # ~1 s, as in check_arch

    cfg = get_pretrained_cfg(arch)
    if cfg is None or cfg.mean is None:
        return IMAGENET_STATS
    return tuple(cfg.mean), tuple(cfg.std)


def feature_extractor(model: nn.Module) -> nn.Module:
    """The part of a trained model that produces the pooled features its classifier sees."""
    if isinstance(model, HandCNN):
        return nn.Sequential(model.features, nn.Flatten())
    if hasattr(model, "members"):  # an Ensemble (nets/ensemble.py): its first member's body
        top = model.members[0]
        return nn.Sequential(model.frozen, top[0], top[1][0], top[1][1])
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[1], nn.Sequential):
        return nn.Sequential(model[0], model[1][0], model[1][1])  # fastai vision_learner: body, concat pool, flatten
    raise ShopeeError(f"cannot find the body of a {type(model).__name__}; embed from --arch instead")


def embedding_head(nf: int, dim: int) -> nn.Sequential:
    """An embedding head in vision_learner's layout (pool, flatten, then layers): a BN-neck projection to `dim`.

    BatchNorm after the projection (the "BN neck" of re-identification) centres the embedding, so cosine
    similarity spreads over the whole sphere.
    """
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nf, dim, bias=False), nn.BatchNorm1d(dim))


def is_embedding_head(head: nn.Module) -> bool:
    """Whether `head` ends in `embedding_head`'s BN neck rather than a classifier."""
    return isinstance(head, nn.Sequential) and isinstance(head[-1], nn.BatchNorm1d)


def is_embedding(model: nn.Module) -> bool:
    """Whether `model` (or, for an Ensemble, its members) ends in an embedding head."""
    if hasattr(model, "members"):  # an Ensemble (nets/ensemble.py)
        return bool(model.embedding)
    return isinstance(model, nn.Sequential) and len(model) == 2 and is_embedding_head(model[1])


def embedding_dim(model: nn.Module) -> int:
    """The length of an embedding model's output (an Ensemble's members all share it)."""
    head = model.members[0][-1] if hasattr(model, "members") else model[1]
    return int(head[-1].num_features)


def body_features(model: nn.Module) -> int:
    """Channels the body of a fastai vision_learner timm model hands its head."""
    net = getattr(model[0], "model", None)
    if net is None or not hasattr(net, "num_features"):
        raise ShopeeError(f"cannot find the body of a {type(model).__name__}; an embedding head needs a timm --arch")
    return int(net.num_features)


@dataclass
class Split:
    """A learner's model cut in two: `frozen` (image -> cached input) and `trained` (cached input -> logits)."""

    frozen: nn.Module
    trained: nn.Module
    body: nn.Module | None  # the body stages inside `trained`, whose BatchNorm keeps its ImageNet statistics


def _timm_stages(model: nn.Module) -> nn.Module | None:
    """The timm network inside a fastai vision_learner model if it has EfficientNet's layout, else None."""
    net = getattr(model[0], "model", None)  # fastai's TimmBody wraps the timm model
    return net if net is not None and all(hasattr(net, a) for a in _TIMM_TOP) else None


def body_stages(arch: str) -> int:
    """How many of `arch`'s body stages can train with the head (0: the body lacks EfficientNet's layout), read
    from a weightless copy on the meta device, so the settings resolve before any learner exists."""
    import timm  # ~1 s: the torch predict path imports this module and may never build a timm model

    if arch == CNN_ARCH:
        return 0
    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, num_classes=0)
    return len(net.blocks) if all(hasattr(net, a) for a in _TIMM_TOP) else 0


def split_model(model: nn.Module, top_stages: int) -> Split:
    """Cut a fastai vision_learner model so that the last `top_stages` body stages train with the head."""
    if top_stages == 0:
        return Split(feature_extractor(model).eval(), model[1][2:], None)  # head layers after concat pool + flatten
    net = _timm_stages(model)
    if net is None:
        raise ShopeeError(f"--top-stages {top_stages}: only EfficientNet/MobileNet-style timm bodies (conv_stem, blocks, "
                          "conv_head) can train their top stages here; use --top-stages 0")
    n = len(net.blocks)
    if top_stages > n:
        raise ShopeeError(f"--top-stages {top_stages}: the body has {n} stages; choose 0 to {n}")
    frozen = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[: n - top_stages]).eval()
    body = nn.Sequential(*net.blocks[n - top_stages :], net.conv_head, net.bn2)
    return Split(frozen, nn.Sequential(body, model[1]), body)


