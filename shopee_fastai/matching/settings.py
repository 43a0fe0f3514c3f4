"""How embeddings become matches (`MatchSettings`), where a run's settings come from, and how they are calibrated
on label groups the network never trained on, in the shape of a marketplace's listings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..artifacts import ModelCard, ModelFiles
from ..config import CALIBRATION_DRAWS, MATCH_THRESHOLD, MAX_K, SEED, SHOPEE_SIZES, Index
from .scoring import Score, group_halves, restrict, score, true_matches, union
from .search import blend_neighbours, knn, neighbours

THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.96, 0.025), 3))  # a best value on either end is flagged


@dataclass(frozen=True)
class MatchSettings:
    """How embeddings become matches; an embedding model's card carries the ones calibrated for it."""

    threshold: float = MATCH_THRESHOLD
    min2: bool = False
    blend: bool = False  # neighbour blending (at the same threshold) before matching

    def line(self) -> str:
        return f"threshold {self.threshold:.3f}, min-2 {'on' if self.min2 else 'off'}, blending {'on' if self.blend else 'off'}"

    @classmethod
    def of(cls, values: dict | None) -> MatchSettings | None:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}) if values else None

    def to_dict(self) -> dict:
        return asdict(self)


def settings_for(model: Path | None, threshold: float | None = None, min2: bool | None = None,
                 blend: bool | None = None) -> tuple[MatchSettings, str]:
    """The settings a match uses and where they came from: what the user gave, else the model's calibrated
    ones (an embedding model's card; never those it marks `calibrated: false`), else the defaults."""
    stored, where = None, "defaults"
    if model is not None and ModelFiles.beside(model).card.is_file():
        card = ModelCard.read(model).matching
        stored = MatchSettings.of(card) if card and card.get("calibrated", True) else None
        where = f"calibrated, from {Path(model).name}'s card" if stored else where
    base = stored or MatchSettings()
    given = {k: v for k, v in (("threshold", threshold), ("min2", min2), ("blend", blend)) if v is not None}
    source = (f"given; the rest {where}" if len(given) < 3 else "given") if given else where
    return replace(base, **given), source


def find(emb: np.ndarray, settings: MatchSettings, k: int = MAX_K, index: Index | str = Index.auto) -> list[set[int]]:
    """Per row, its matches (itself included) under `settings`."""
    if settings.blend:
        emb = blend_neighbours(emb, settings.threshold, index=index)
    sims, idx = knn(emb, k, index=index)
    return neighbours(sims, idx, settings.threshold, settings.min2)


@dataclass(frozen=True)
class Calibration:
    settings: MatchSettings
    score: Score
    on_edge: bool = False  # the best threshold is an end of its grid: the true best may lie beyond it


def shopee_draws(labels: Sequence, seed: int = SEED, draws: int = CALIBRATION_DRAWS,
                 sizes: Sequence[int] = SHOPEE_SIZES) -> list[np.ndarray]:
    """Row indices of `draws` seeded draws that take every group at a size drawn from `sizes` (capped by what
    the group has): calibration groups of dozens of photos, scored in the shape of a marketplace's listings."""
    rng = np.random.default_rng(seed)
    rows = pd.Series(np.arange(len(labels))).groupby(pd.factorize(pd.Series(list(labels)))[0]).agg(list)
    return [np.sort(np.concatenate([rng.choice(r, min(len(r), int(rng.choice(sizes))), replace=False) for r in rows]))
            for _ in range(draws)]


def calibrate(emb: np.ndarray, labels: Sequence, min2: bool | None = None, blend: bool | None = None,
              extra: list[set[int]] | None = None, grid: Sequence[float] = THRESHOLD_GRID,
              draws: list[np.ndarray] | None = None) -> Calibration:
    """The settings with the best F1 on `labels`' groups: a threshold from `grid`, with min-2 and blending each
    fixed or (None) tried on and off. With `draws` (row subsets, see `shopee_draws`), F1 is their mean, each
    draw matched among itself."""
    labels = list(labels)
    parts = draws if draws is not None else [np.arange(len(labels))]
    cases = []
    for rows in parts:
        part = emb[rows]
        cases.append((part, knn(part), true_matches([labels[i] for i in rows]), restrict(extra, rows) if extra else None))
    best: Calibration | None = None
    for t in grid:
        for bl in (False, True) if blend is None else (blend,):
            for m2 in (False, True) if min2 is None else (min2,):
                got = []
                for part, plain, truth, more in cases:
                    sims, idx = knn(blend_neighbours(part, t, near=plain)) if bl else plain
                    found = neighbours(sims, idx, t, m2)
                    got.append(score(union(found, more) if more else found, truth))
                mean = Score(*(round(float(np.mean([getattr(g, f.name) for g in got])), 4) for f in fields(Score)))
                if best is None or mean.f1 > best.score.f1:
                    best = Calibration(MatchSettings(float(t), m2, bl), mean, t in (grid[0], grid[-1]))
    return best


def tune(emb: np.ndarray, labels: Sequence, seed: int = 0, min2: bool | None = False, blend: bool | None = False,
         extra: list[set[int]] | None = None) -> tuple[Calibration, Score]:
    """Calibrate on one half of the label groups, score on the other: (the calibration, held-out score)."""
    tune_rows, test_rows = group_halves(labels, seed)
    labels = list(labels)
    part_extra = (lambda rows: restrict(extra, rows)) if extra else (lambda rows: None)
    cal = calibrate(emb[tune_rows], [labels[i] for i in tune_rows], min2, blend, part_extra(tune_rows))
    found = find(emb[test_rows], cal.settings)
    if extra:
        found = union(found, part_extra(test_rows))
    return cal, score(found, restrict(true_matches(labels), test_rows))
