"""Product matching as the Kaggle competition scored it: for every posting, the postings of the same product.

Cosine nearest neighbours of L2-normalised embeddings (k <= 50: Shopee's groups are capped at 50; an exact
faiss index, or an approximate HNSW graph for large tables), a similarity threshold, the posting itself
always included, optionally neighbour blending (each embedding replaced by the similarity-weighted mean of
its confident neighbours before matching), the winners' "min-2" rule (keep the nearest neighbour when
nothing else passes), and unions with identical `image_phash` and with title TF-IDF neighbours. Scored by
mean per-row F1 when `label_group` is known. An embedding model carries the settings calibrated on label
groups it never trained on (`MatchSettings` in its card).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .artifacts import ModelCard, ModelFiles
from .config import (BLEND_K, CALIBRATION_DRAWS, EXACT_MAX, MATCH_THRESHOLD, MAX_K, OFFLINE_ARCH, SEED, SHOPEE_SIZES,
                     TITLE_THRESHOLD, Index)
from .data import table as D
from .errors import ShopeeError
from .io import write_text

KNN_CHUNK = 1024  # query rows per similarity block: memory O(chunk x n), not O(n^2)
THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.96, 0.025), 3))  # a best value on either end is flagged
TUNE_FRACTION = 0.5  # share of label groups used to pick the threshold; the rest reports F1


HNSW_M, HNSW_EF_BUILD, HNSW_EF_SEARCH = 32, 64, 256  # graph degree and search breadth: recall@10 in docs/speed.md


def _faiss_index(emb: np.ndarray, index: Index):
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
            sims, idx = _faiss_index(emb, kind).search(emb, k)
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


def blend(emb: np.ndarray, threshold: float, k: int = BLEND_K, index: Index | str = Index.auto,
          near: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Neighbour blending: each row becomes the similarity-weighted mean of its top-k neighbours at or above
    `threshold` (itself included), renormalised; confident neighbours pull a listing towards its group.

    `near`: a `knn` of `emb` already at hand (k columns or more), so trying several thresholds searches once.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    sims, idx = knn(emb, k, index=index) if near is None else (near[0][:, :k], near[1][:, :k])
    return _pulled(emb, np.zeros_like(emb), emb, sims, idx, threshold)


def _pulled(rows: np.ndarray, start: np.ndarray, base: np.ndarray, sims: np.ndarray, idx: np.ndarray,
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


def same_value(values: pd.Series) -> list[set[int]]:
    """Per row: the rows sharing its value (identical phash, say)."""
    groups = pd.Series(np.arange(len(values))).groupby(pd.factorize(values)[0]).agg(set)
    codes = pd.factorize(values)[0]
    return [groups[c] if c >= 0 else {i} for i, c in enumerate(codes)]


def title_neighbours(titles: Sequence[str], threshold: float = TITLE_THRESHOLD, k: int = MAX_K) -> list[set[int]]:
    """The competition's text baseline: TF-IDF of titles, cosine neighbours at or above `threshold`."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # 1.4 s that only --titles needs

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
                 blend_: bool | None = None) -> tuple[MatchSettings, str]:
    """The settings `match` uses and where they came from: what the user gave, else the model's calibrated
    ones (an embedding model's card), else the defaults."""
    stored, where = None, "defaults"
    if model is not None and ModelFiles.beside(model).card.is_file():
        card = ModelCard.read(model).matching
        stored = MatchSettings.of(card) if card and card.get("calibrated", True) else None
        where = f"calibrated, from {model.name}'s card" if stored else where
    base = stored or MatchSettings()
    given = {k: v for k, v in (("threshold", threshold), ("min2", min2), ("blend", blend_)) if v is not None}
    source = (f"given; the rest {where}" if len(given) < 3 else "given") if given else where
    return replace(base, **given), source


def find(emb: np.ndarray, settings: MatchSettings, k: int = MAX_K, index: Index | str = Index.auto) -> list[set[int]]:
    """Per row, its matches (itself included) under `settings`."""
    if settings.blend:
        emb = blend(emb, settings.threshold, index=index)
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


def calibrate(emb: np.ndarray, labels: Sequence, min2: bool | None = None, blend_: bool | None = None,
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
        for bl in (False, True) if blend_ is None else (blend_,):
            for m2 in (False, True) if min2 is None else (min2,):
                got = []
                for part, plain, truth, more in cases:
                    sims, idx = knn(blend(part, t, near=plain)) if bl else plain
                    found = neighbours(sims, idx, t, m2)
                    got.append(score(union(found, more) if more else found, truth))
                mean = Score(*(round(float(np.mean([getattr(g, f.name) for g in got])), 4) for f in fields(Score)))
                if best is None or mean.f1 > best.score.f1:
                    best = Calibration(MatchSettings(float(t), m2, bl), mean, t in (grid[0], grid[-1]))
    return best


def tune(emb: np.ndarray, labels: Sequence, seed: int = 0, min2: bool | None = False, blend_: bool | None = False,
         extra: list[set[int]] | None = None) -> tuple[Calibration, Score]:
    """Calibrate on one half of the label groups, score on the other: (the calibration, held-out score)."""
    tune_rows, test_rows = group_halves(labels, seed)
    labels = list(labels)
    part_extra = (lambda rows: restrict(extra, rows)) if extra else (lambda rows: None)
    cal = calibrate(emb[tune_rows], [labels[i] for i in tune_rows], min2, blend_, part_extra(tune_rows))
    found = find(emb[test_rows], cal.settings)
    if extra:
        found = union(found, part_extra(test_rows))
    return cal, score(found, restrict(true_matches(labels), test_rows))


def write_submission(dest: Path, posting_ids: Sequence[str], matches: list[set[int]]) -> None:
    """`posting_id,matches` with space-separated posting ids, exactly as the competition's submission."""
    ids = list(posting_ids)
    rows = [" ".join(ids[j] for j in sorted(m)) for m in matches]
    write_text(dest, pd.DataFrame({D.ID: ids, "matches": rows}).to_csv(index=False))


@dataclass
class MatchResult:
    matches: list[set[int]]
    settings: MatchSettings
    score: Score | None = None  # on every row, when labels are known
    tuned: tuple[Score, Score] | None = None  # (on the tuning groups, on the held-out groups)


def match_table(table: pd.DataFrame, emb: np.ndarray, settings: MatchSettings = MatchSettings(), tune_it: bool = False,
                phash: bool = False, titles: bool = False, title_threshold: float = TITLE_THRESHOLD, k: int = MAX_K,
                seed: int = 0, index: Index | str = Index.auto) -> MatchResult:
    """Match every posting of `table` (rows aligned with `emb`); `tune_it` calibrates the threshold (min-2 and
    blending as `settings` has them) on half the groups and reports F1 on the other half."""
    if len(emb) != len(table):
        raise ShopeeError(f"embeddings have {len(emb)} rows but the table {len(table)}; embed the same CSV")
    if len(table) == 0:
        raise ShopeeError("the table has no rows to match; give a CSV with postings")
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
        cal, held = tune(emb, table[D.LABEL].tolist(), seed, settings.min2, settings.blend, extra_sets)
        settings, tuned = cal.settings, (cal.score, held)
    found = find(emb, settings, k, index)
    found = union(found, extra_sets) if extra_sets else found
    result = MatchResult(found, settings, tuned=tuned)
    if labelled:
        result.score = score(found, true_matches(table[D.LABEL].tolist()))
    return result


def find_in(catalog: np.ndarray, queries: np.ndarray, settings: MatchSettings, k: int = MAX_K,
            index: Index | str = Index.auto) -> list[set[int]]:
    """Per query row, the catalogue rows it matches under `settings`. A new listing is not in the catalogue, so
    it may match none; with min-2, its nearest listing when none passes. Blending blends the catalogue among
    itself, then each query with its confident catalogue neighbours (itself included, as in a table)."""
    catalog = np.ascontiguousarray(catalog, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if settings.blend:
        catalog = blend(catalog, settings.threshold, index=index)
        queries = _pulled(queries, queries, catalog, *_search(catalog, queries, BLEND_K, index), settings.threshold)
    sims, idx = _search(catalog, queries, k, index)
    out = []
    for s, j in zip(sims, idx):
        keep = set(j[(s >= settings.threshold) & (j >= 0)].tolist())
        if settings.min2 and not keep and len(j) and j[0] >= 0:
            keep = {int(j[0])}
        out.append(keep)
    return out


def _search(base: np.ndarray, queries: np.ndarray, k: int, index: Index | str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `base` for each query row (similarities, indices; -1 where the base has fewer rows)."""
    try:
        sims, idx = _faiss_index(base, resolve_index(len(base), index)).search(queries, min(k, len(base)))
    except ImportError:
        raise ShopeeError("faiss is not installed; `pip install faiss-cpu`") from None
    return sims, idx.astype(np.int64)


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
    if not 1 <= k <= MAX_K:
        raise ShopeeError(f"--k {k}: choose 1 to {MAX_K} (Shopee's groups hold at most 50 postings)")
    if not np.abs(catalog_emb).sum(1).any():
        raise ShopeeError(f"none of the catalogue's {len(catalog)} photos could be read; check its images folder")
    found = find_in(catalog_emb, new_emb, settings, k, index)
    result = CatalogMatch(new, catalog, found, settings)
    if D.LABEL in new.columns and D.LABEL in catalog.columns and new[D.LABEL].notna().all():
        rows = pd.Series(np.arange(len(catalog))).groupby(catalog[D.LABEL].astype(str).to_numpy()).agg(set).to_dict()
        result.score = score(found, [rows.get(str(g), set()) for g in new[D.LABEL]])
    return result


def same_layout(new: pd.DataFrame, catalog: pd.DataFrame, where: Path) -> None:
    """New listings must come in the catalogue's columns (label_group may be missing: a new listing's group is
    what matching finds)."""
    cols = lambda t: set(t.columns) - {D.PATH, D.LABEL}  # noqa: E731
    if cols(new) != cols(catalog):
        extra, missing = sorted(cols(new) - cols(catalog)), sorted(cols(catalog) - cols(new))
        raise ShopeeError(f"{where}: its columns differ from the catalogue's (" + "; ".join(
            part for part in (f"not in the catalogue: {', '.join(extra)}" if extra else "",
                              f"missing: {', '.join(missing)}" if missing else "") if part) + "); give both one layout")


def write_catalog_matches(dest: Path, result: CatalogMatch) -> None:
    """posting_id of each new listing, then the posting_ids of the catalogue listings it matches (atomically)."""
    ids = result.catalog[D.ID].astype(str).to_numpy()
    rows = [" ".join(ids[sorted(m)]) for m in result.matches]
    write_text(dest, pd.DataFrame({D.ID: result.new[D.ID], "matches": rows}).to_csv(index=False))


def match_new_listings(data: Path, catalog: Path, model: Path | None = None, settings: MatchSettings = MatchSettings(),
                       csv: str = "train.csv", catalog_csv: str = "train.csv", arch: str | None = None,
                       weights: Path | None = None, k: int = MAX_K, index: Index | str = Index.auto) -> CatalogMatch:
    """`match --catalog`: embed the new listings of `data` and match them against `catalog`'s listings, whose
    embeddings are cached on disk by the photos' and the model's identities, so a daily batch of new
    listings costs only its own embedding."""
    from .inference.embed import embed_images, embeddings_for  # loads torch: `match --embeddings` stays free of it

    arch = arch or OFFLINE_ARCH
    photos = D.images_dir(catalog, catalog_csv)
    if Path(catalog).is_dir() and not photos.is_dir():
        raise ShopeeError(f"--catalog {catalog}: no {photos.name}/ folder beside {catalog_csv}; a catalogue needs its "
                          "listings' photos")
    cat = D.read_table(catalog, catalog_csv, labels=False)
    new = D.read_table(data, csv, labels=False)
    same_layout(new, cat, Path(data) / csv)
    cat_emb = (embeddings_for(list(cat[D.PATH]), arch, model=model) if weights is None
               else embed_images(list(cat[D.PATH]), model, arch, weights))
    return match_catalog(new, embed_images(list(new[D.PATH]), model, arch, weights), cat, cat_emb, settings, k, index)


def read_embeddings(path: Path) -> np.ndarray:
    if not Path(path).is_file():
        raise ShopeeError(f"--embeddings {path}: file not found; write it with `shopee-fastai embed`")
    return np.load(path)


def match_postings(data: Path, csv: str = "train.csv", model: Path | None = None, arch: str | None = None,
                   weights: Path | None = None, embeddings: Path | None = None, settings: MatchSettings = MatchSettings(),
                   tune_it: bool = False, phash: bool = False, titles: bool = False, title_threshold: float = TITLE_THRESHOLD,
                   k: int = MAX_K, seed: int = SEED, index: Index | str = Index.auto) -> tuple[pd.DataFrame, MatchResult]:
    """`match`: the table of `data`, embedded (or its saved `embeddings`), matched among itself."""
    table = D.read_table(data, csv, labels=False)
    if embeddings:
        emb = read_embeddings(embeddings)
    else:
        from .inference.embed import embed_images  # loads torch: `match --embeddings` stays free of it

        emb = embed_images(list(table[D.PATH]), model, arch or OFFLINE_ARCH, weights)
    return table, match_table(table, emb, settings, tune_it, phash, titles, title_threshold, k, seed, index)


def refuse_with_catalog(**given) -> None:
    """What `match --catalog` cannot combine with: it embeds both tables itself and matches across them."""
    named = [name for name, value in given.items() if value]
    if named:
        raise ShopeeError(f"--{named[0].replace('_', '-')} does not combine with --catalog, which embeds both tables "
                          "itself and matches across them; drop one of the two")
