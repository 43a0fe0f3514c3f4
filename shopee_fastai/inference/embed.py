"""Image embeddings: L2-normalised pooled features from a pretrained backbone or a trained learner's body.

They serve near-duplicate search (data/neardup.py) and product matching (matching.py). An unreadable
photo gets a row of zeros, which matches nothing but itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import OFFLINE_ARCH, cache_dir
from ..data.cache import use_cache
from ..data.images import decode_chunks, load_rgb
from ..io import atomic_path, file_key
from ..nets.body import feature_extractor
from ..nets.weights import pretrained_backbone
from .backends import learner_batches

EMBED_BS = 64


def embed_paths(paths: Sequence[str | Path], arch: str = OFFLINE_ARCH, weights: Path | None = None,
                bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """[n, d] float32 unit vectors from a pretrained backbone, one per image, in input order."""
    import torch

    model, tfm = pretrained_backbone(arch, weights)
    model = model.to(memory_format=torch.channels_last)
    side = getattr(tfm.transforms[0], "size", 224)
    side = side if isinstance(side, int) else max(side)
    sources = use_cache(map(str, paths), side)[0]  # prepared images where `prepare` made them at a side that serves
    out = []
    with torch.inference_mode():
        for part in decode_chunks(sources, lambda p: tfm(load_rgb(p, draft_size=side)), chunk=bs, progress=progress):
            block = np.zeros((len(part), model.num_features), np.float32)
            ok = [(k, x) for k, (_, x, _) in enumerate(part) if x is not None]
            if ok:
                feats = model(torch.stack([x for _, x in ok]).contiguous(memory_format=torch.channels_last))
                block[[k for k, _ in ok]] = torch.nn.functional.normalize(feats.float(), dim=1).numpy()
            out.append(block)
    return np.concatenate(out) if out else np.zeros((0, model.num_features), np.float32)


def embeddings_for(paths: list[str], arch: str = OFFLINE_ARCH, progress: bool = True) -> np.ndarray:
    """`embed_paths`, cached on disk by the files' identities (path, size, mtime) and the arch."""
    ident = hashlib.sha1("\n".join([arch, *(file_key(Path(p)) for p in paths)]).encode()).hexdigest()[:24]
    dest = cache_dir() / "embeddings" / f"{ident}.npy"
    if dest.is_file():
        return np.load(dest)
    emb = embed_paths(paths, arch, progress=progress)
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    return emb


def learner_embed(learn, images: Sequence[str | Path], bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """Pooled body features of a trained learner (what its head sees), L2-normalised, with its preprocessing."""
    import torch

    body = feature_extractor(learn.model).eval()
    rows: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for paths, dl, _ in learner_batches(learn, [Path(p) for p in images], bs, progress):
            feats = [torch.nn.functional.normalize(body(b[0]).float(), dim=1) for b in dl] if dl is not None else []
            if feats:
                rows.update(zip(map(str, paths), torch.cat(feats).numpy()))
    dim = next(iter(rows.values())).shape[0] if rows else 1
    return np.stack([rows.get(str(Path(p)), np.zeros(dim, np.float32)) for p in images]).astype(np.float32)
