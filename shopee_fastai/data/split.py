"""Splits: seeded train/valid/test stratified by label group, keeping near-duplicate clusters together.

A `--holdout` pattern makes the test split of exactly the postings it matches. Their direct twins on the
training side (the same file, the same `image_phash`, or an embedding at TWIN_THRESHOLD or above) are left
out of every split (`twin`), and counted; their near-duplicate sequences otherwise stay in training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import SEED, TWIN_THRESHOLD
from ..errors import ShopeeError
from ..io import write_text
from .table import ID, IMAGE, LABEL, PHASH

SPLIT = "split"
TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
TWIN = "twin"  # a direct twin of a held-out photo: in no split, so the test never meets its own copy
SIM_CHUNK = 2048  # rows of a similarity block held at once: memory stays O(chunk x n)
FRACTIONS = (0.8, 0.1, 0.1)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of a group's `n` rows go to each split; every split gets one where the group has enough rows."""
    counts = [int(round(n * f)) for f in fractions[1:]]
    if n >= len(fractions):
        counts = [max(1, c) for c in counts]
    while sum(counts) >= n and any(counts):  # leave the training side at least one row
        counts[int(np.argmax(counts))] -= 1
    return [n - sum(counts), *counts]


def _assign_units(sizes: list[int], order: np.ndarray, targets: list[int]) -> list[int]:
    """Greedy: biggest units first, each to the split furthest below its target row count."""
    filled = [0] * len(targets)
    where = [0] * len(sizes)
    for u in sorted(order, key=lambda u: -sizes[u]):  # stable: equal sizes keep their random order
        k = int(np.argmax([t - f for t, f in zip(targets, filled)]))
        where[u] = k
        filled[k] += sizes[u]
    return where


def held_out(df: pd.DataFrame, holdout: str) -> np.ndarray:
    """Rows whose posting_id matches the `holdout` regular expression (one line naming the fix where none does)."""
    try:
        held = df[ID].str.contains(holdout, regex=True).to_numpy(bool)
    except re.error as e:
        raise ShopeeError(f"--holdout {holdout!r}: not a valid regular expression ({e})") from e
    if not held.any():
        raise ShopeeError(f"--holdout {holdout!r} matches no posting_id; give a pattern such as '^val_'")
    return held


def direct_twins(df: pd.DataFrame, held: np.ndarray, embeddings: np.ndarray | None = None,
                 threshold: float = TWIN_THRESHOLD, chunk: int = SIM_CHUNK) -> np.ndarray:
    """Rows outside `held` that are a direct twin of a held row: the same file, the same phash, or (with
    `embeddings`, unit vectors) cosine >= `threshold`. Direct links only: a chain of look-alikes is no twin."""
    twin = np.array(df[IMAGE].isin(set(df.loc[held, IMAGE])), bool)
    if PHASH in df.columns:
        twin |= df[PHASH].isin(set(df.loc[held, PHASH].dropna())).to_numpy(bool)  # a missing phash matches nothing
    if embeddings is not None and held.any():
        rest = np.flatnonzero(~held)
        for start in range(0, len(rest), chunk):
            rows = rest[start : start + chunk]
            twin[rows] |= (embeddings[rows] @ embeddings[held].T >= threshold).any(1)
    return twin & ~held


def make_split(
    df: pd.DataFrame,
    seed: int = SEED,
    fractions: Sequence[float] = FRACTIONS,
    holdout: str | None = None,
    clusters: np.ndarray | None = None,
    twins: np.ndarray | None = None,
) -> pd.Series:
    """Seeded split stratified by label group: a Series posting_id -> train/valid/test (and twin).

    `clusters` (an id per row, see `neardup`) keeps every cluster of near-duplicates inside one split;
    without it every row is its own cluster (the plain random split). A cluster is stratified under
    its most common label group. `holdout` is a regular expression: the postings whose id matches are the
    test split, and nothing else is; `twins` (a mask, default `direct_twins` by file and phash) marks the
    training-side photos left out as their copies. The rest is split train/valid in the proportion of
    `fractions`.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
        raise ShopeeError(f"split fractions {tuple(fractions)} must be three numbers summing to 1")
    rng = np.random.default_rng(seed)
    cl = pd.Series(np.arange(len(df)) if clusters is None else np.asarray(clusters), index=df.index)
    split = pd.Series(TRAIN, index=df[ID].values, name=SPLIT)
    rest = df
    names: tuple[str, ...] = SPLITS
    if holdout:
        held = held_out(df, holdout)
        twin = (direct_twins(df, held) if twins is None else np.asarray(twins, bool)) & ~held
        split[df.loc[held, ID].values] = TEST
        split[df.loc[twin, ID].values] = TWIN
        rest = df[~held & ~twin]
        fractions, names = (fractions[0], fractions[1]), (TRAIN, VALID)
    units = rest.groupby(cl[rest.index].to_numpy(), sort=True)
    members = [g[ID].to_numpy() for _, g in units]
    label = [g[LABEL].mode().iloc[0] for _, g in units]
    by_label: dict[str, list[int]] = {}
    for u, lab in enumerate(label):
        by_label.setdefault(lab, []).append(u)
    for lab in sorted(by_label):
        us = by_label[lab]
        sizes = [len(members[u]) for u in us]
        targets = _split_counts(sum(sizes), fractions)
        for u, k in zip(us, _assign_units(sizes, rng.permutation(len(us)), targets)):
            split[members[u]] = names[k]
    return split


def member_folds(df: pd.DataFrame, split: pd.Series, members: int, seed: int = SEED,
                 clusters: np.ndarray | None = None) -> pd.Series:
    """Each ensemble member's validation fold: posting_id -> fold for the train and valid rows of `split`.

    Fold 0 is the valid split; folds 1 to `members`-1 are drawn from the training rows, each about the valid
    split's size, stratified by label group with `clusters` kept whole (as `make_split`); -1 marks the rows
    no member validates on. Member k validates on fold k and trains on every other row, so the ensemble as a
    whole learns from every photo while each member is still scored on photos it never saw.
    """
    rng = np.random.default_rng(seed + 1)  # not the split's own draw
    where = df[ID].map(split)
    folds = pd.Series(-1, index=df.loc[where.isin((TRAIN, VALID)), ID].values, name="fold")
    folds[df.loc[where.eq(VALID), ID].values] = 0
    share = min(FRACTIONS[1] / FRACTIONS[0], 1 / members)  # of the training rows, per fold
    fractions = [1 - (members - 1) * share] + [share] * (members - 1)
    cl = pd.Series(np.arange(len(df)) if clusters is None else np.asarray(clusters), index=df.index)
    train = df[where.eq(TRAIN).to_numpy()]
    units = [g for _, g in train.groupby(cl[train.index].to_numpy(), sort=True)]
    by_label: dict[str, list[int]] = {}
    for u, g in enumerate(units):
        by_label.setdefault(g[LABEL].mode().iloc[0], []).append(u)
    for lab in sorted(by_label):
        us = by_label[lab]
        sizes = [len(units[u]) for u in us]
        for u, k in zip(us, _assign_units(sizes, rng.permutation(len(us)), _split_counts(sum(sizes), fractions))):
            folds[units[u][ID].values] = k if k else -1
    return folds


def counts(split: pd.Series) -> dict[str, int]:
    """Photos per split, and the held-out photos' twins left out (a model card records these)."""
    return {name: int((split == name).sum()) for name in (*SPLITS, TWIN)}


def group_split(df: pd.DataFrame, seed: int, valid_groups: float, holdout: str | None = None) -> pd.Series:
    """Seeded split by label group: a `valid_groups` share of the groups is validation, unseen in training.

    Matching meets products it never saw, so an embedding validates (and calibrates its threshold) on
    whole groups. `holdout` postings form the test split, from every group, and their twins by file and
    phash are left out, as in `make_split`.
    """
    split = pd.Series(TRAIN, index=df[ID].values, name=SPLIT)
    if holdout:
        base = make_split(df, seed, holdout=holdout)
        aside = base.isin((TEST, TWIN)).to_numpy()
        split[aside] = base[aside]
    outside = split.isin((TRAIN, VALID)).to_numpy()
    groups = np.array(sorted(df.loc[outside, LABEL].astype(str).unique()))
    # two at least where possible: one group alone has no other product to tell apart
    n_valid = min(len(groups) - 2, max(2, int(round(len(groups) * valid_groups))))
    if n_valid < 1:
        raise ShopeeError(f"{len(groups)} label group(s) outside the test split: an embedding needs at least 3 "
                          "(2 to train on, 1 unseen to validate); add groups")
    picked = set(np.random.default_rng(seed).permutation(groups)[:n_valid].tolist())
    split[(df[LABEL].astype(str).isin(picked).to_numpy()) & outside] = VALID
    return split


def write_split(split: pd.Series, dest: Path) -> None:
    write_text(dest, split.rename_axis(ID).reset_index().to_csv(index=False))


def read_split(src: Path) -> pd.Series:
    if not Path(src).is_file():
        raise ShopeeError(f"{src}: split file not found; it is written beside the model by `train`, retrain or pass the right --model")
    table = pd.read_csv(src, dtype=str)
    return pd.Series(table[SPLIT].values, index=table[ID].values, name=SPLIT)


def rows_in_split(df: pd.DataFrame, split: pd.Series, name: str) -> pd.DataFrame:
    return df[df[ID].map(split).eq(name)].reset_index(drop=True)
