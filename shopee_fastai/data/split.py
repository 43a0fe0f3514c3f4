"""Splits: seeded train/valid/test stratified by label group, keeping near-duplicate clusters together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import SEED
from ..errors import ShopeeError
from ..io import write_text
from .table import ID, LABEL

SPLIT = "split"
TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
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


def make_split(
    df: pd.DataFrame,
    seed: int = SEED,
    fractions: Sequence[float] = FRACTIONS,
    holdout: str | None = None,
    clusters: np.ndarray | None = None,
) -> pd.Series:
    """Seeded split stratified by label group: a Series posting_id -> train/valid/test.

    `clusters` (an id per row, see `neardup`) keeps every cluster of near-duplicates inside one split;
    without it every row is its own cluster (the plain random split). A cluster is stratified under
    its most common label group. `holdout` is a regular expression: postings whose id matches form the
    test split (photos from another occasion, say), together with their near-duplicates, and the rest
    is split train/valid in the proportion of `fractions`.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
        raise ShopeeError(f"split fractions {tuple(fractions)} must be three numbers summing to 1")
    rng = np.random.default_rng(seed)
    cl = pd.Series(np.arange(len(df)) if clusters is None else np.asarray(clusters), index=df.index)
    split = pd.Series(TRAIN, index=df[ID].values, name=SPLIT)
    rest = df
    names: tuple[str, ...] = SPLITS
    if holdout:
        try:
            held = df[ID].str.contains(holdout, regex=True)
        except re.error as e:
            raise ShopeeError(f"--holdout {holdout!r}: not a valid regular expression ({e})") from e
        if not held.any():
            raise ShopeeError(f"--holdout {holdout!r} matches no posting_id; give a pattern such as '^val_'")
        held |= cl.isin(cl[held])  # near-duplicates of held-out photos go with them
        split[df.loc[held, ID].values] = TEST
        rest = df[~held]
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


def group_split(df: pd.DataFrame, seed: int, valid_groups: float, holdout: str | None = None) -> pd.Series:
    """Seeded split by label group: a `valid_groups` share of the groups is validation, unseen in training.

    Matching meets products it never saw, so an embedding validates (and calibrates its threshold) on
    whole groups. `holdout` postings form the test split, from every group, as in `make_split`.
    """
    split = pd.Series(TRAIN, index=df[ID].values, name=SPLIT)
    if holdout:
        split[make_split(df, seed, holdout=holdout).eq(TEST).to_numpy()] = TEST
    groups = np.array(sorted(df.loc[split.ne(TEST).to_numpy(), LABEL].astype(str).unique()))
    # two at least where possible: one group alone has no other product to tell apart
    n_valid = min(len(groups) - 2, max(2, int(round(len(groups) * valid_groups))))
    if n_valid < 1:
        raise ShopeeError(f"{len(groups)} label group(s) outside the test split: an embedding needs at least 3 "
                          "(2 to train on, 1 unseen to validate); add groups")
    picked = set(np.random.default_rng(seed).permutation(groups)[:n_valid].tolist())
    split[(df[LABEL].astype(str).isin(picked).to_numpy()) & split.ne(TEST).to_numpy()] = VALID
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
