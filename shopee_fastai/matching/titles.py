"""Listing titles as evidence: TF-IDF vectors and their top-k cosine neighbours, for matching (the competition's
text baseline, word TF-IDF) and for the audit (character n-grams, which survive typos and run-together words)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import MAX_K, TITLE_THRESHOLD

TITLE_CHUNK = 1024  # titles compared at once: memory O(chunk x n)
VECTORIZERS = {
    "word": dict(),  # the competition's baseline
    "char": dict(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
}


def title_knn(titles: Sequence, k: int = MAX_K, analyzer: str = "word", include_self: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` titles nearest each title by TF-IDF cosine: (similarities, indices), each [n, k], best first.
    A missing title is empty; without `include_self` a title is never its own neighbour."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # 1.4 s that only title matching needs

    tfidf = TfidfVectorizer(**VECTORIZERS[analyzer]).fit_transform(["" if t is None or t != t else str(t) for t in titles])
    n = tfidf.shape[0]
    k = max(1, min(k, n - (0 if include_self else 1)))
    sims, idx = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    for start in range(0, n, TITLE_CHUNK):
        block = (tfidf[start : start + TITLE_CHUNK] @ tfidf.T).toarray()
        rows = np.arange(len(block))
        if include_self:
            block[rows, start + rows] = np.maximum(block[rows, start + rows], 1.0)  # itself first, even when empty
        else:
            block[rows, start + rows] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(block, top, 1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        idx[start : start + len(block)] = np.take_along_axis(top, order, 1)
        sims[start : start + len(block)] = np.take_along_axis(top_sims, order, 1)
    return sims, idx


def title_neighbours(titles: Sequence, threshold: float = TITLE_THRESHOLD, k: int = MAX_K) -> list[set[int]]:
    """Per listing: the listings whose titles are at or above `threshold` (word TF-IDF cosine), itself included."""
    sims, idx = title_knn(titles, k)
    return [set(j[s >= threshold].tolist()) | {i} for i, (s, j) in enumerate(zip(sims, idx))]
