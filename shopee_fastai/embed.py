"""Image embeddings from a pretrained backbone: L2-normalised pooled features, for near-duplicate search."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ShopeeError
from .images import load_rgb
from .weights import LITE0_ARCH, resolve_weights, weights_load_error

DEFAULT_EMBED_ARCH = LITE0_ARCH  # ImageNet weights available offline
EMBED_BS = 64
DECODE_THREADS = 4


def backbone(arch: str = DEFAULT_EMBED_ARCH, weights: Path | None = None):
    """A pretrained timm model without its classifier, in eval mode, and its eval transform."""
    import timm
    from timm.data import create_transform, resolve_data_config

    choice = resolve_weights(arch, pretrained=True, weights=weights)
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0, **choice.timm_kwargs).eval()
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise weights_load_error(arch, choice, e) from e
    return model, create_transform(**resolve_data_config({}, model=model))


def embed_paths(paths: Sequence[str | Path], arch: str = DEFAULT_EMBED_ARCH, weights: Path | None = None,
                bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """[n, d] float32 unit vectors, one per image; an unreadable image gets a row of zeros."""
    import torch
    from fastprogress.fastprogress import progress_bar

    model, tfm = backbone(arch, weights)
    model = model.to(memory_format=torch.channels_last)
    side = getattr(tfm.transforms[0], "size", 224)
    side = side if isinstance(side, int) else max(side)

    def load(p):
        try:
            return tfm(load_rgb(p, draft_size=side))
        except ShopeeError:
            return None  # unreadable: a zero row, which matches nothing

    from .cache import use_cache

    paths = use_cache(map(str, paths), side)[0]  # prepared images where `prepare` made them at a side that serves
    out = []
    starts = range(0, len(paths), bs)
    with ThreadPoolExecutor(DECODE_THREADS) as pool, torch.inference_mode():
        for start in progress_bar(starts) if progress and len(starts) > 1 else starts:
            loaded = list(pool.map(load, paths[start : start + bs]))
            ok = [x for x in loaded if x is not None]
            block = np.zeros((len(loaded), model.num_features), np.float32)
            if ok:
                feats = model(torch.stack(ok).contiguous(memory_format=torch.channels_last))
                block[[i for i, x in enumerate(loaded) if x is not None]] = torch.nn.functional.normalize(feats.float(), dim=1).numpy()
            out.append(block)
    return np.concatenate(out) if out else np.zeros((0, model.num_features), np.float32)


def learner_embed(learn, images: Sequence[str | Path], bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """Pooled body features of a trained learner (what its head sees), L2-normalised, with the training preprocessing.

    A row of zeros stands for an unreadable image (it then matches nothing but itself).
    """
    import torch

    from .models import feature_extractor
    from .predict import test_dls

    body = feature_extractor(learn.model).eval()
    rows: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for paths, dl, _ in test_dls(learn, [Path(p) for p in images], bs, progress):
            feats = [torch.nn.functional.normalize(body(b[0]).float(), dim=1) for b in dl] if dl is not None else []
            if feats:
                rows.update(zip(map(str, paths), torch.cat(feats).numpy()))
    dim = next(iter(rows.values())).shape[0] if rows else 1
    return np.stack([rows.get(str(Path(p)), np.zeros(dim, np.float32)) for p in images]).astype(np.float32)
