"""Which catalogue listings match these new photos: the one answer `match --catalog`, serve's *Find matches* tab
and `/api/match` all give, with a model's full settings (threshold, min-2, blending) and one index choice.

A new listing is not in the catalogue, so it may match none; with min-2, its nearest listing when none passes.
Blending blends the catalogue among itself, then each new photo with its confident catalogue neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..artifacts import PKL, ModelCard, ModelFiles
from ..config import BLEND_K, MAX_K, OFFLINE_ARCH, Index
from ..data import table as D
from ..errors import ShopeeError
from .scoring import Score, score
from .search import blend_neighbours, faiss_index, pulled, resolve_index
from .settings import MatchSettings


@dataclass
class Found:
    """Per new photo: the catalogue rows it matches, and its `k` nearest rows (similarities, indices; -1: none)."""

    matches: list[set[int]]
    sims: np.ndarray
    idx: np.ndarray


class Catalogue:
    """Listings to match new photos against: their table, their embeddings (blended where the settings blend)
    in one faiss index, and the settings. Built once; `match` answers any number of queries."""

    def __init__(self, table: pd.DataFrame, emb: np.ndarray, settings: MatchSettings = MatchSettings(),
                 index: Index | str = Index.auto):
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if len(emb) != len(table):
            raise ShopeeError(f"the catalogue has {len(table)} listings but {len(emb)} embeddings; embed the same CSV")
        if not len(emb) or not np.abs(emb).sum(1).any():
            raise ShopeeError(f"none of the catalogue's {len(table)} photos could be read; check its images folder")
        self.table, self.settings = table, settings
        self.kind = resolve_index(len(emb), index)
        self.emb = blend_neighbours(emb, settings.threshold, index=self.kind) if settings.blend else emb
        self.index = faiss_index(self.emb, self.kind)

    def __len__(self) -> int:
        return len(self.table)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self)))
        return sims, idx.astype(np.int64)

    def match(self, queries: np.ndarray, k: int = MAX_K) -> Found:
        """Per query vector, the listings it matches among its `k` nearest (an unreadable photo's zero vector
        matches none)."""
        if not 1 <= k <= MAX_K:
            raise ShopeeError(f"--k {k}: choose 1 to {MAX_K} (Shopee's groups hold at most 50 postings)")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        read = np.abs(queries).sum(1) > 0
        t = self.settings.threshold
        if self.settings.blend and len(queries):
            queries = pulled(queries, queries, self.emb, *self._search(queries, BLEND_K), t)
        sims, idx = self._search(queries, k) if len(queries) else (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64))
        matches = []
        for ok, s, j in zip(read, sims, idx):
            keep = set(j[(s >= t) & (j >= 0)].tolist()) if ok else set()
            if ok and self.settings.min2 and not keep and len(j) and j[0] >= 0:
                keep = {int(j[0])}
            matches.append(keep)
        return Found(matches, sims, idx)

    def listing(self, row: int, similarity: float, match: bool) -> dict[str, Any]:
        """One listing as the page and the API show it."""
        title = self.table[D.TITLE].iat[row] if D.TITLE in self.table else ""
        return {"posting_id": str(self.table[D.ID].iat[row]), "title": "" if pd.isna(title) else str(title),
                "image": str(self.table[D.IMAGE].iat[row]), "similarity": round(float(similarity), 4), "match": match}


@dataclass
class CatalogMatch:
    """New listings matched against a catalogue: per new row, catalogue row numbers."""

    new: pd.DataFrame
    catalog: pd.DataFrame
    matches: list[set[int]]
    settings: MatchSettings
    score: Score | None = None  # when both tables carry label_group


def match_catalog(new: pd.DataFrame, new_emb: np.ndarray, catalog: pd.DataFrame, catalog_emb: np.ndarray,
                  settings: MatchSettings = MatchSettings(), k: int = MAX_K, index: Index | str = Index.auto) -> CatalogMatch:
    """Each new listing's matches among the catalogue's listings, scored when both sides are labelled (a new
    listing's truth: the catalogue's listings of its label group; none at all is a perfect answer for one
    whose group the catalogue lacks)."""
    found = Catalogue(catalog, catalog_emb, settings, index).match(new_emb, k).matches
    result = CatalogMatch(new, catalog, found, settings)
    if D.LABEL in new.columns and D.LABEL in catalog.columns and new[D.LABEL].notna().all():
        rows = pd.Series(np.arange(len(catalog))).groupby(catalog[D.LABEL].astype(str).to_numpy()).agg(set).to_dict()
        result.score = score(found, [rows.get(str(g), set()) for g in new[D.LABEL]])
    return result


def matching_source(model: Path | None) -> Path | None:
    """The model whose embeddings match photos: an embedding model itself; a classifier's `.pkl` learner (its
    body's pooled features), itself or the one beside its other exports; else None, the pretrained backbone."""
    if model is None:
        return None
    model = Path(model)
    files = ModelFiles.beside(model)
    if model.suffix == PKL or not files.card.is_file() or ModelCard.read(model).matching is not None:
        return model
    return files.pkl if files.pkl.is_file() else None


def embed_for_matching(paths: Sequence[str | Path], model: Path | None = None, arch: str | None = None,
                       weights: Path | None = None, cache: bool = False, progress: bool = True) -> np.ndarray:
    """Unit vectors that match `paths` (zeros for unreadable photos), from `matching_source(model)`, else the
    backbone `arch` (`weights`); with `cache`, kept on disk by the photos' and the model's identities."""
    from ..inference.embed import embed_images, embeddings_for  # loads torch: `match --embeddings` stays free of it

    source, arch = matching_source(model), arch or OFFLINE_ARCH
    if cache and weights is None:
        return embeddings_for([str(p) for p in paths], arch, progress, model=source)
    return embed_images(list(paths), source, arch, weights, progress=progress)


def source_line(model: Path | None, arch: str | None = None) -> str:
    """Which embeddings match, in words."""
    source = matching_source(model)
    if source is None:
        return f"embeddings of the pretrained {arch or OFFLINE_ARCH}" + (f" ({Path(model).name} is a classifier without "
                                                                          "its .pkl beside it)" if model else "")
    return f"embeddings of {source.name}" + ("'s body (a classifier's pooled features)" if source.suffix == PKL
                                             and (not ModelFiles.beside(source).card.is_file()
                                                  or ModelCard.read(source).matching is None) else "")
