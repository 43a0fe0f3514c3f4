"""Product matching as the Kaggle competition scored it: for every posting, the postings of the same product.

Cosine nearest neighbours of L2-normalised embeddings (k <= 50: Shopee's groups are capped at 50), a
similarity threshold, the posting itself always included, optionally the winners' "min-2" rule (keep the
nearest neighbour when nothing else passes), and unions with identical `image_phash` and with title
TF-IDF neighbours. Scored by mean per-row F1 when `label_group` is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import MATCH_THRESHOLD, TITLE_THRESHOLD
from .data import table as D
from .errors import ShopeeError

MAX_K = 50
KNN_CHUNK = 1024  # query rows per similarity block: memory O(chunk x n), not O(n^2)
THRESHOLD_GRID = tuple(np.round(np.arange(0.30, 0.96, 0.025), 3))
TUNE_FRACTION = 0.5  # share of label groups used to pick the threshold; the rest reports F1


def knn(emb: np.ndarray, k: int = MAX_K, chunk: int = KNN_CHUNK, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every row (itself included): (similarities, indices), each [n, k], best first."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    k = min(k, len(emb))
    if backend in ("auto", "faiss"):
        try:
            import faiss

            index = faiss.IndexFlatIP(emb.shape[1])
            index.add(emb)
            sims, idx = index.search(emb, k)
            return sims, idx.astype(np.int64)
        except ImportError:
            if backend == "faiss":
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


def same_value(values: pd.Series) -> list[set[int]]:
    """Per row: the rows sharing its value (identical phash, say)."""
    groups = pd.Series(np.arange(len(values))).groupby(pd.factorize(values)[0]).agg(set)
    codes = pd.factorize(values)[0]
    return [groups[c] if c >= 0 else {i} for i, c in enumerate(codes)]


def title_neighbours(titles: Sequence[str], threshold: float = TITLE_THRESHOLD, k: int = MAX_K) -> list[set[int]]:
    """The competition's text baseline: TF-IDF of titles, cosine neighbours at or above `threshold`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer().fit_transform([str(t) for t in titles])
    out: list[set[int]] = []
    for start in range(0, tfidf.shape[0], KNN_CHUNK):
        block = (tfidf[start : start + KNN_CHUNK] @ tfidf.T).toarray()
        for r, row in enumerate(block):
            top = np.argpartition(-row, min(k, len(row)) - 1)[:k]
            out.append(set(top[row[top] >= threshold].tolist()) | {start + r})
    return out


def union(*parts: list[set[int]]) -> list[set[int]]:
    return [set().union(*sets) for sets in zip(*parts)]


def true_matches(labels: Sequence) -> list[set[int]]:
    return same_value(pd.Series(list(labels)))


@dataclass(frozen=True)
class Score:
    f1: float
    precision: float
    recall: float

    def line(self) -> str:
        return f"F1 {self.f1:.4f}  precision {self.precision:.4f}  recall {self.recall:.4f}"


def score(predicted: list[set[int]], truth: list[set[int]]) -> Score:
    """Mean per-row F1 (the competition's metric), precision and recall."""
    inter = np.array([len(p & t) for p, t in zip(predicted, truth)], float)
    np_, nt = np.array([len(p) for p in predicted], float), np.array([len(t) for t in truth], float)
    return Score(round(float(np.mean(2 * inter / (np_ + nt))), 4), round(float(np.mean(inter / np_)), 4),
                 round(float(np.mean(inter / nt)), 4))


def restrict(sets: list[set[int]], rows: np.ndarray) -> list[set[int]]:
    """The sets of `rows`, renumbered 0..len(rows)-1 and limited to those rows (matching inside one part)."""
    pos = {int(r): i for i, r in enumerate(rows)}
    return [{pos[j] for j in sets[r] if j in pos} for r in rows]


def group_halves(labels: Sequence, seed: int, fraction: float = TUNE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two parts split by label group: no group is in both (threshold tuning without leakage)."""
    groups = pd.unique(pd.Series(list(labels)))
    rng = np.random.default_rng(seed)
    pick = set(rng.permutation(groups)[: max(1, int(round(len(groups) * fraction)))].tolist())
    mask = np.array([g in pick for g in labels])
    if mask.all() or not mask.any():
        raise ShopeeError("threshold tuning needs at least 2 label groups")
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def tune(emb: np.ndarray, labels: Sequence, seed: int = 0, min2: bool = False,
         extra: list[set[int]] | None = None, grid: Sequence[float] = THRESHOLD_GRID) -> tuple[float, Score, Score]:
    """Pick the threshold on one half of the label groups, score it on the other: (threshold, tune F1, held-out F1)."""
    tune_rows, test_rows = group_halves(labels, seed)
    truth = true_matches(labels)
    results = {}
    for part in (tune_rows, test_rows):
        sims, idx = knn(emb[part])
        results[part.tobytes()] = (sims, idx, restrict(truth, part), restrict(extra, part) if extra else None)

    def run(part, t):
        sims, idx, truth_p, extra_p = results[part.tobytes()]
        found = neighbours(sims, idx, t, min2)
        return score(union(found, extra_p) if extra_p else found, truth_p)

    best = max(grid, key=lambda t: run(tune_rows, t).f1)
    return float(best), run(tune_rows, best), run(test_rows, best)


def write_submission(dest: Path, posting_ids: Sequence[str], matches: list[set[int]]) -> None:
    """`posting_id,matches` with space-separated posting ids, exactly as the competition's submission."""
    from .io import write_text

    ids = list(posting_ids)
    rows = [" ".join(ids[j] for j in sorted(m)) for m in matches]
    write_text(dest, pd.DataFrame({D.ID: ids, "matches": rows}).to_csv(index=False))


@dataclass
class MatchResult:
    matches: list[set[int]]
    threshold: float
    score: Score | None = None  # on every row, when labels are known
    tuned: tuple[Score, Score] | None = None  # (on the tuning groups, on the held-out groups)


def match_table(table: pd.DataFrame, emb: np.ndarray, threshold: float | None = MATCH_THRESHOLD, tune_it: bool = False,
                min2: bool = False, phash: bool = False, titles: bool = False,
                title_threshold: float = TITLE_THRESHOLD, k: int = MAX_K, seed: int = 0) -> MatchResult:
    """Match every posting of `table` (rows aligned with `emb`), optionally tuning the threshold on half the groups."""
    if len(emb) != len(table):
        raise ShopeeError(f"embeddings have {len(emb)} rows but the table {len(table)}; embed the same CSV")
    if not 1 <= k <= MAX_K:
        raise ShopeeError(f"--k {k}: choose 1 to {MAX_K} (Shopee's groups hold at most 50 postings)")
    labelled = D.LABEL in table.columns and table[D.LABEL].notna().all()
    extra = []
    for wanted, col, make in ((phash, D.PHASH, same_value), (titles, D.TITLE, lambda v: title_neighbours(v, title_threshold))):
        if wanted:
            if col not in table.columns:
                raise ShopeeError(f"the CSV has no {col} column; drop the option that uses it")
            extra.append(make(table[col]))
    extra_sets = union(*extra) if extra else None
    tuned = None
    if tune_it:
        if not labelled:
            raise ShopeeError("--tune needs label_group in the CSV; give --threshold instead")
        threshold, *tuned = tune(emb, table[D.LABEL].tolist(), seed, min2, extra_sets)
    sims, idx = knn(emb, k)
    found = neighbours(sims, idx, threshold, min2)
    found = union(found, extra_sets) if extra_sets else found
    result = MatchResult(found, float(threshold), tuned=tuple(tuned) if tuned else None)
    if labelled:
        result.score = score(found, true_matches(table[D.LABEL].tolist()))
    return result
