"""The `match` command's work on files: a table matched among itself, new listings against a catalogue, and the
CSVs they write (atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import MAX_K, SEED, TITLE_THRESHOLD, Index
from ..data import table as D
from ..errors import ShopeeError
from ..io import write_text
from .catalog import CatalogMatch, embed_for_matching, match_catalog
from .scoring import Score, same_value, score, true_matches, union
from .settings import MatchSettings, find, tune
from .titles import title_neighbours


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


def read_catalog(catalog: Path, csv: str = "train.csv") -> pd.DataFrame:
    """A catalogue's listings, refused in one line where its photos are missing."""
    photos = D.images_dir(catalog, csv)
    if Path(catalog).is_dir() and not photos.is_dir():
        raise ShopeeError(f"--catalog {catalog}: no {photos.name}/ folder beside {csv}; a catalogue needs its "
                          "listings' photos")
    return D.read_table(catalog, csv, labels=False)


def match_new_listings(data: Path, catalog: Path, model: Path | None = None, settings: MatchSettings = MatchSettings(),
                       csv: str = "train.csv", catalog_csv: str = "train.csv", arch: str | None = None,
                       weights: Path | None = None, k: int = MAX_K, index: Index | str = Index.auto) -> CatalogMatch:
    """`match --catalog`: embed the new listings of `data` and match them against `catalog`'s listings, whose
    embeddings are cached on disk by the photos' and the model's identities, so a daily batch of new
    listings costs only its own embedding."""
    cat = read_catalog(catalog, catalog_csv)
    new = D.read_table(data, csv, labels=False)
    same_layout(new, cat, Path(data) / csv)
    cat_emb = embed_for_matching(list(cat[D.PATH]), model, arch, weights, cache=True)
    return match_catalog(new, embed_for_matching(list(new[D.PATH]), model, arch, weights), cat, cat_emb, settings, k, index)


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
    emb = read_embeddings(embeddings) if embeddings else embed_for_matching(list(table[D.PATH]), model, arch, weights)
    return table, match_table(table, emb, settings, tune_it, phash, titles, title_threshold, k, seed, index)


def refuse_with_catalog(**given) -> None:
    """What `match --catalog` cannot combine with: it embeds both tables itself and matches across them."""
    named = [name for name, value in given.items() if value]
    if named:
        raise ShopeeError(f"--{named[0].replace('_', '-')} does not combine with --catalog, which embeds both tables "
                          "itself and matches across them; drop one of the two")
