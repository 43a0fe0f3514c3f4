"""Image embeddings: L2-normalised pooled features from a pretrained backbone or a trained learner's body.

They serve near-duplicate search (data/neardup.py) and product matching (matching.py). An unreadable
photo gets a row of zeros, which matches nothing but itself.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..artifacts import PKL
from ..config import EMBEDDING, OFFLINE_ARCH, SIZE, Precision, cache_dir
from ..data.cache import use_cache
from ..data.images import decode_chunks, load_rgb
from ..device import world
from ..errors import ShopeeError
from ..io import atomic_path, file_key
from ..nets.body import feature_extractor
from ..nets.weights import pretrained_backbone
from .load import load_learner, load_predictor
from .predictions import Predictions
from .torch_backends import learner_batches

EMBED_BS = 64


def embed_paths(paths: Sequence[str | Path], arch: str = OFFLINE_ARCH, weights: Path | None = None,
                bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """[n, d] float32 unit vectors from a pretrained backbone, one per image, in input order."""
    model, tfm = pretrained_backbone(arch, weights)
    model = model.to(memory_format=torch.channels_last)
    side = getattr(tfm.transforms[0], "size", SIZE)
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


def embeddings_for(paths: list[str], arch: str = OFFLINE_ARCH, progress: bool = True, model: Path | None = None) -> np.ndarray:
    """`embed_images` from a backbone (`arch`) or a `model`, cached on disk by the photos' and the model file's
    identities (path, size, mtime)."""
    dest = embeddings_cache_path(paths, arch, model)
    if dest.is_file():
        return np.load(dest)
    emb = embed_images(paths, model, arch, progress=progress)
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    return emb


def embeddings_cache_path(paths: list[str], arch: str = OFFLINE_ARCH, model: Path | None = None) -> Path:
    """Where `embeddings_for` keeps these photos' embeddings from `arch` (or `model`)."""
    source = file_key(Path(model)) if model is not None else arch
    ident = hashlib.sha1("\n".join([source, *(file_key(Path(p)) for p in paths)]).encode()).hexdigest()[:24]
    return cache_dir() / "embeddings" / f"{ident}.npy"


def embed_images(paths: Sequence[str | Path], model: Path | None = None, arch: str = OFFLINE_ARCH,
                 weights: Path | None = None, progress: bool = True, precision: str = "auto") -> np.ndarray | None:
    """[n, d] unit vectors in input order (zeros for unreadable photos): from an embedding model (.pkl,
    .safetensors or .onnx, on the fast path; `precision` int8 runs its int8 graph), a classifier learner's
    body, or a pretrained backbone.

    Launched on several processes (torchrun, accelerate launch), each embeds every n-th photo on its own
    device and rank 0 gathers them and returns the whole array; the other ranks return None.
    """
    rank, n = world()
    if n > 1:
        return _sharded(paths, rank, n, lambda part: _embed_here(part, model, arch, weights, progress and not rank, precision))
    return _embed_here(paths, model, arch, weights, progress, precision)


def _embed_here(paths: Sequence[str | Path], model: Path | None, arch: str, weights: Path | None,
                progress: bool, precision: str = "auto") -> np.ndarray:
    int8 = Precision.parse(precision, "--precision") == Precision.int8
    if model is None:
        if int8:
            raise ShopeeError("--int8 runs an embedding model's int8 graph; add --model (train --loss arcface)")
        return embed_paths(paths, arch, weights, progress=progress)
    predictor = load_predictor(Path(model), precision=precision)
    if predictor.output != EMBEDDING:
        if int8:
            raise ShopeeError(f"--model {model}: a classifier; --int8 embeds with an embedding model only")
        if Path(model).suffix != PKL:
            raise ShopeeError(f"--model {model}: a classifier; its body embeds from the .pkl learner, or train an "
                              "embedding model with `train --loss arcface`")
        return learner_embed(_learner(str(model), file_key(Path(model))), paths, progress=progress)
    return aligned(predictor.outputs([Path(p) for p in paths], progress=progress), paths)


@lru_cache(maxsize=2)
def _learner(path: str, key: str):
    """A classifier's learner, loaded once per file version: `serve` embeds every query with its body."""
    return load_learner(Path(path))


def _sharded(paths: Sequence[str | Path], rank: int, n: int, embed) -> np.ndarray | None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    mine = embed(list(paths)[rank::n])
    shards = [None] * n if rank == 0 else None
    dist.gather_object(mine, shards, dst=0)
    if rank:
        return None
    out = np.zeros((len(paths), max(s.shape[1] for s in shards)), np.float32)
    for r, shard in enumerate(shards):
        out[r::n] = shard
    return out


def aligned(got: Predictions, paths: Sequence[str | Path]) -> np.ndarray:
    """A predictor's output rows in the order of `paths`, zeros where a photo could not be read."""
    rows = dict(zip(map(str, got.paths), got.outputs))
    dim = got.outputs.shape[1] if got.outputs.ndim == 2 and got.outputs.shape[1] else 1
    return np.stack([rows.get(str(Path(p)), np.zeros(dim, np.float32)) for p in paths]).astype(np.float32) \
        if len(paths) else np.zeros((0, dim), np.float32)


def learner_embed(learn, images: Sequence[str | Path], bs: int = EMBED_BS, progress: bool = True) -> np.ndarray:
    """Pooled body features of a trained learner (what its head sees), L2-normalised, with its preprocessing."""
    body = feature_extractor(learn.model).eval()
    rows: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for paths, dl, _ in learner_batches(learn, [Path(p) for p in images], bs, progress):
            feats = [torch.nn.functional.normalize(body(b[0]).float(), dim=1) for b in dl] if dl is not None else []
            if feats:
                rows.update(zip(map(str, paths), torch.cat(feats).numpy()))
    dim = next(iter(rows.values())).shape[0] if rows else 1
    return np.stack([rows.get(str(Path(p)), np.zeros(dim, np.float32)) for p in images]).astype(np.float32)
