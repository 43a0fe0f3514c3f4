"""The competition's metric: mean per-row F1 of predicted against true match sets, and the set algebra around it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ShopeeError

TUNE_FRACTION = 0.5  # share of label groups used to pick the threshold; the rest reports F1


def same_value(values: pd.Series) -> list[set[int]]:
    """Per row: the rows sharing its value (identical phash, say)."""
    groups = pd.Series(np.arange(len(values))).groupby(pd.factorize(values)[0]).agg(set)
    codes = pd.factorize(values)[0]
    return [groups[c] if c >= 0 else {i} for i, c in enumerate(codes)]


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
    """Mean per-row F1 (the competition's metric), precision and recall. A row with nothing to find and nothing
    found (a new listing whose product a catalogue lacks) scores 1; nothing found where something was, 0."""
    inter = np.array([len(p & t) for p, t in zip(predicted, truth)], float)
    np_, nt = np.array([len(p) for p in predicted], float), np.array([len(t) for t in truth], float)

    def ratio(num, den, empty):
        return np.where(den > 0, num / np.maximum(den, 1), empty)

    return Score(round(float(np.mean(ratio(2 * inter, np_ + nt, 1.0))), 4),
                 round(float(np.mean(ratio(inter, np_, (nt == 0).astype(float)))), 4),
                 round(float(np.mean(ratio(inter, nt, (np_ == 0).astype(float)))), 4))


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
