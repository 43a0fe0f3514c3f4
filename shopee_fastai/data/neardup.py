"""Near-duplicate clusters: photos that are the same or nearly so must not sit on both sides of a split.

Three kinds of twin join a cluster: the same image file, the same `image_phash`, and — the case phash
misses, such as frames shot in sequence or lightly edited re-uploads — pretrained embeddings whose cosine
similarity reaches a threshold (DUP_THRESHOLD, measured on grocery-store: docs/results.md). Within a label
group, embedding links form clusters by `linkage`: "single" takes connected components (one chain of
look-alikes joins a whole shooting sequence); "average" and "complete" cluster hierarchically, so a cluster's
photos are similar on average, or every pair of them. Identical files and phashes join clusters whatever the
linkage. The caller hands in the embeddings (training computes them with `inference.embed.embeddings_for`),
so this data step never calls up into inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage as hierarchy
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from ..config import DUP_LINKAGE, DUP_THRESHOLD, SEED, Linkage
from . import split as S
from . import table as D

SIM_CHUNK = S.SIM_CHUNK


def similar_pairs(emb: np.ndarray, threshold: float, groups: np.ndarray | None = None,
                  chunk: int = SIM_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of unit vectors with cosine similarity >= `threshold` (and the same `groups` value, if given)."""
    rows, cols = [], []
    for start in range(0, len(emb), chunk):
        sim = emb[start : start + chunk] @ emb.T
        if groups is not None:
            sim[groups[start : start + chunk, None] != groups[None, :]] = -np.inf
        i, j = np.nonzero(sim >= threshold)
        i += start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(rows), cat(cols)


def _same_value_pairs(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Link each row to the first row sharing its value (enough for connected components)."""
    codes = pd.factorize(values)[0]
    first = pd.Series(np.arange(len(values))).groupby(codes).transform("first").to_numpy()
    keep = (first != np.arange(len(values))) & (codes >= 0)
    return first[keep], np.arange(len(values))[keep]


def _hierarchical(emb: np.ndarray, groups: np.ndarray, threshold: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Links (row, first row of its cluster) of each group's hierarchical clusters cut at cosine `threshold`."""
    label = np.zeros(len(emb), np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) > 1:
            dist = np.clip(1 - emb[rows] @ emb[rows].T, 0, 2)
            np.fill_diagonal(dist, 0)
            found = fcluster(hierarchy(squareform(dist, checks=False), method), t=1 - threshold, criterion="distance")
            label[rows] = label.max() + found
        else:
            label[rows] = label.max() + 1
    return _same_value_pairs(pd.Series(label))


def clusters(df: pd.DataFrame, embeddings: np.ndarray | None = None, threshold: float = DUP_THRESHOLD,
             linkage: Linkage | str = DUP_LINKAGE) -> np.ndarray:
    """A cluster id per row of `df` (0..k-1): identical files, identical phash, and embedding twins joined."""
    links = [_same_value_pairs(df[D.IMAGE])]
    if D.PHASH in df.columns:
        links.append(_same_value_pairs(df[D.PHASH]))
    if embeddings is not None:
        # Within a label group only: across groups, similar-looking products are not twins, and chains of
        # them would merge whole categories into one cluster that no split can stratify.
        groups = pd.factorize(df[D.LABEL])[0] if D.LABEL in df.columns else None
        linkage = Linkage.parse(linkage, "linkage")
        if linkage == Linkage.single or groups is None:
            links.append(similar_pairs(embeddings, threshold, groups))
        else:
            links.append(_hierarchical(embeddings, groups, threshold, str(linkage)))
    i = np.concatenate([a for a, _ in links])
    j = np.concatenate([b for _, b in links])
    n = len(df)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@dataclass
class LeakReport:
    """What near-duplicate clustering found, and what a plain random split would have leaked."""

    clusters: int
    rows_in_shared_clusters: int
    largest: int
    random_split_test_leaks: int
    random_split_test_images: int

    def line(self) -> str:
        return (f"{self.clusters} near-duplicate clusters ({self.rows_in_shared_clusters} images share one, largest "
                f"{self.largest}); a plain random split would put {self.random_split_test_leaks} of "
                f"{self.random_split_test_images} test images beside a twin in training")


def leak_report(df: pd.DataFrame, cluster_ids: np.ndarray, seed: int) -> LeakReport:
    sizes = np.bincount(cluster_ids)
    plain = S.make_split(df, seed)
    return LeakReport(int(len(sizes)), int(sizes[sizes > 1].sum()), int(sizes.max(initial=0)),
                      leaked(plain, df, cluster_ids), int((plain == S.TEST).sum()))


@dataclass
class LeakFreeSplit:
    """A split that keeps every near-duplicate cluster in one part, and what the clusters found."""

    split: pd.Series  # posting_id -> train/valid/test, or twin (a held-out photo's direct twin, in no split)
    clusters: np.ndarray  # a cluster id per row of the table
    leaks: LeakReport  # what a plain random split would have leaked
    test_leaks: int  # test images beside a near-duplicate in training (with --holdout: its sequence, not its twin)

    def line(self) -> str:
        n = S.counts(self.split)
        line = f"leak-free split: {', '.join(f'{s} {n[s]}' for s in S.SPLITS)}"
        if n[S.TWIN]:
            line += f"; {n[S.TWIN]} training-side photos left out as direct twins of held-out photos"
        return f"{line}; test images beside a near-duplicate in training: {self.test_leaks}"


def leak_free_split(df: pd.DataFrame, embeddings: np.ndarray | None, threshold: float = DUP_THRESHOLD,
                    seed: int = SEED, holdout: str | None = None, linkage: Linkage | str = DUP_LINKAGE) -> LeakFreeSplit:
    """`make_split` over the near-duplicate clusters of `df`, whose photos' `embeddings` the caller computed.

    With `holdout`, the matching photos are the test split; of the rest, only their direct twins (file,
    phash, embedding at TWIN_THRESHOLD) are left out: a held-out photo's near-duplicate sequence is the
    other occasion's photos of the same product, which training needs, not a copy of the test photo.
    """
    ids = clusters(df, embeddings, threshold, linkage)
    twins = S.direct_twins(df, S.held_out(df, holdout), embeddings) if holdout else None
    split = S.make_split(df, seed, holdout=holdout, clusters=ids, twins=twins)
    return LeakFreeSplit(split, ids, leak_report(df, ids, seed), leaked(split, df, ids))


def leaked(split: pd.Series, df: pd.DataFrame, cluster_ids: np.ndarray, side: str = S.TEST) -> int:
    """How many `side` images share a cluster with a training image."""
    where = df[D.ID].map(split).to_numpy()
    train_clusters = set(cluster_ids[where == S.TRAIN])
    return int(sum(c in train_clusters for c in cluster_ids[where == side]))
