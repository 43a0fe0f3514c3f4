"""Nearest neighbours of L2-normalised embeddings: an exact faiss index (numpy without faiss), or an
approximate HNSW graph for large tables; and neighbour blending over them."""

from __future__ import annotations

import numpy as np

from ..config import BLEND_K, EXACT_MAX, MAX_K, Index
from ..errors import ShopeeError

KNN_CHUNK = 1024  # query rows per similarity block: memory O(chunk x n), not O(n^2)
HNSW_M, HNSW_EF_BUILD, HNSW_EF_SEARCH = 32, 64, 256  # graph degree and search breadth: recall@10 in docs/speed.md


def faiss_index(emb: np.ndarray, index: Index):
    """A faiss inner-product index over `emb` (unit vectors: inner product is cosine similarity)."""
    import faiss  # may be absent: exact search falls back to numpy (knn)

    if index == Index.hnsw:
        ix = faiss.IndexHNSWFlat(emb.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = HNSW_EF_BUILD
        ix.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        ix = faiss.IndexFlatIP(emb.shape[1])
    ix.add(emb)
    return ix


def resolve_index(n: int, index: Index | str = Index.auto) -> Index:
    """exact up to EXACT_MAX rows, where exact search takes under a minute on 2 cores; hnsw above."""
    index = Index.parse(index, "--index")
    return (Index.exact if n <= EXACT_MAX else Index.hnsw) if index == Index.auto else index


def knn(emb: np.ndarray, k: int = MAX_K, chunk: int = KNN_CHUNK, backend: str = "auto",
        index: Index | str = Index.auto) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every row (itself included): (similarities, indices), each [n, k], best first.

    `index`: exact (faiss flat, or numpy without faiss), hnsw (approximate), auto (by size). An approximate
    search can miss a row itself; it is put back first, as exact search finds it.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    k = min(k, len(emb))
    kind = resolve_index(len(emb), index)
    if backend in ("auto", "faiss"):
        try:
            sims, idx = faiss_index(emb, kind).search(emb, k)
            idx = idx.astype(np.int64)
            return (_self_first(emb, sims, idx) if kind == Index.hnsw else (sims, idx))
        except ImportError:
            if backend == "faiss" or kind == Index.hnsw:
                raise ShopeeError("faiss is not installed; `pip install faiss-cpu` or use the numpy backend")
    sims = np.empty((len(emb), k), np.float32)
    idx = np.empty((len(emb), k), np.int64)
    for start in range(0, len(emb), chunk):
        block = emb[start : start + chunk] @ emb.T
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(block, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx[start : start + chunk] = np.take_along_axis(part, order, 1)
        sims[start : start + chunk] = np.take_along_axis(top, order, 1)
    return sims, idx


def _self_first(emb: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(idx))
    missing = ~(idx == rows[:, None]).any(1)
    if missing.any():  # drop the weakest neighbour, put the row itself first
        idx[missing] = np.concatenate([rows[missing, None], idx[missing, :-1]], 1)
        sims[missing] = np.concatenate([(emb[missing] * emb[missing]).sum(1, keepdims=True), sims[missing, :-1]], 1)
    return sims, idx


def blend_neighbours(emb: np.ndarray, threshold: float, k: int = BLEND_K, index: Index | str = Index.auto,
                     near: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Neighbour blending: each row becomes the similarity-weighted mean of its top-k neighbours at or above
    `threshold` (itself included), renormalised; confident neighbours pull a listing towards its group.

    `near`: a `knn` of `emb` already at hand (k columns or more), so trying several thresholds searches once.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    sims, idx = knn(emb, k, index=index) if near is None else (near[0][:, :k], near[1][:, :k])
    return pulled(emb, np.zeros_like(emb), emb, sims, idx, threshold)


def pulled(rows: np.ndarray, start: np.ndarray, base: np.ndarray, sims: np.ndarray, idx: np.ndarray,
           threshold: float) -> np.ndarray:
    """`start` plus the similarity-weighted sum of each row's neighbours in `base` at or above `threshold`,
    renormalised (the row itself where nothing is left). Neighbour index -1 (none found) weighs nothing."""
    w = np.where((sims >= threshold) & (idx >= 0), sims, 0).astype(np.float32)
    out = start.astype(np.float32, copy=True)
    for first in range(0, len(rows), KNN_CHUNK):  # [chunk, k, d] at a time
        part = slice(first, first + KNN_CHUNK)
        out[part] += np.einsum("nk,nkd->nd", w[part], base[np.maximum(idx[part], 0)])
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norm > 0, out / np.maximum(norm, 1e-12), rows).astype(np.float32)


def neighbours(sims: np.ndarray, idx: np.ndarray, threshold: float, min2: bool = False) -> list[set[int]]:
    """Per row: neighbours at or above `threshold`, plus itself; with `min2`, the nearest other one if none passes."""
    out = []
    for i, (s, j) in enumerate(zip(sims, idx)):
        keep = set(j[s >= threshold].tolist()) | {i}
        if min2 and len(keep) == 1:
            other = j[j != i]
            if len(other):
                keep.add(int(other[0]))
        out.append(keep)
    return out
