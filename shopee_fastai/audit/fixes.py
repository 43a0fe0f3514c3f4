"""fixes.csv: one decision per finding (keep, relabel, drop, merge), edited by a person or the Review tab, and
applied as a cleaned Kaggle-layout folder that links to the original photos and never changes them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..data import table as D
from ..errors import ShopeeError
from ..io import atomic_path, write_text
from .find import KIND, KINDS, OUTLIER, SAME_PRODUCT, SUGGESTED, UNREADABLE, Audit, check_out

ACTION, NEW_GROUP = "action", "new_group"
KEEP, RELABEL, DROP, MERGE = "keep", "relabel", "drop", "merge"
ACTIONS = (KEEP, RELABEL, DROP, MERGE)  # an empty action is a finding nobody has decided yet: it changes nothing
FIX_COLUMNS = [D.ID, D.LABEL, KIND, ACTION, NEW_GROUP]
APPLIED = ".shopee-fastai-cleaned"  # marks a folder --apply wrote, which a later --apply may replace


def fixes_table(result: Audit, earlier: pd.DataFrame | None = None) -> pd.DataFrame:
    """A row per finding, undecided, its suggested group filled in; decisions from `earlier` carry over."""
    f = result.findings
    fixes = pd.DataFrame({D.ID: f[D.ID], D.LABEL: f[D.LABEL], KIND: f[KIND], ACTION: "", NEW_GROUP: f[SUGGESTED]})
    if earlier is not None and len(earlier):
        key = [D.ID, D.LABEL, KIND, NEW_GROUP]
        decided = earlier[earlier[ACTION] != ""].drop_duplicates(key).set_index(key)[ACTION]
        fixes[ACTION] = [decided.get(tuple(r), "") for r in fixes[key].itertuples(index=False)]
    return fixes


def read_fixes(path: Path) -> pd.DataFrame:
    """fixes.csv as strings (empty cells ""), or one line naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ShopeeError(f"{path}: no such file; `shopee-fastai audit` writes fixes.csv into its --out folder")
    try:
        fixes = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ShopeeError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from e
    missing = [c for c in (D.ID, D.LABEL, ACTION, NEW_GROUP) if c not in fixes.columns]
    if missing:
        raise ShopeeError(f"{path}: missing column(s) {', '.join(missing)}; the header must include {','.join(FIX_COLUMNS)}")
    fixes[ACTION] = fixes[ACTION].str.strip().str.lower()
    return fixes


def check_fixes(fixes: pd.DataFrame, table: pd.DataFrame, where: str) -> None:
    """One line naming the first row whose action, posting or group is not one the data has."""
    ids, groups = set(table[D.ID]), set(table[D.LABEL].astype(str))
    for row, fix in enumerate(fixes.itertuples(index=False), 2):
        f = fix._asdict()
        action, pid, new, old = f[ACTION], f[D.ID], str(f[NEW_GROUP]), str(f[D.LABEL])
        at = f"{where}: row {row}"
        if action not in ACTIONS and action != "":
            raise ShopeeError(f"{at}: action {action!r} is not one of {', '.join(ACTIONS)} (or empty: undecided)")
        if action in (RELABEL, DROP) and pid not in ids:
            raise ShopeeError(f"{at}: posting_id {pid!r} is not in the data's train.csv; fix the id or remove the row")
        if action == RELABEL and new not in groups:
            raise ShopeeError(f"{at}: new_group {new!r} is not a label group of the data; name an existing group")
        if action == MERGE:
            for name, g in ((D.LABEL, old), (NEW_GROUP, new)):
                if g not in groups:
                    raise ShopeeError(f"{at}: {name} {g!r} is not a label group of the data; a merge joins two existing groups")


def accepting(fixes: pd.DataFrame, kinds: Iterable[str], where: str) -> pd.DataFrame:
    """`fixes` with the undecided findings of `kinds` set to what they propose: a catalogue too large to review
    takes the audit's suggestions for, say, every listing in the wrong group, and keeps its own decisions."""
    kinds = list(kinds)
    if not kinds:
        return fixes
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ShopeeError(f"--accept {unknown[0]}: not a kind of finding; choose from {', '.join(KINDS)}")
    if KIND not in fixes.columns:
        raise ShopeeError(f"{where}: no {KIND} column, so --accept cannot tell the findings apart; use the fixes.csv audit wrote")
    fixes = fixes.copy()
    undecided = (fixes[ACTION] == "") & fixes[KIND].isin(kinds)
    fixes.loc[undecided, ACTION] = fixes.loc[undecided, KIND].map(proposed)
    return fixes


def apply_fixes(data: Path, fixes: pd.DataFrame | Path, out: Path | None, accept: Iterable[str] = ()) -> Path:
    """Write `out`: `data`'s Kaggle layout with the decided relabels, drops and merges, photos linked, not copied.

    `accept`: kinds of finding whose undecided rows take their suggestion (`accepting`). `out` is written beside
    itself and renamed into place, so it is whole or absent; the data folder is only read.
    """
    if out is None:
        raise ShopeeError("--apply writes a cleaned copy of --data; name its new folder with --out")
    data, out = Path(data), Path(out)
    check_out(out, data)
    where = str(fixes) if isinstance(fixes, Path) else "fixes"
    fixes = read_fixes(fixes) if isinstance(fixes, Path) else fixes.fillna("").astype(str)
    fixes = accepting(fixes, accept, where)
    table = D.read_table(data)
    check_fixes(fixes, table, where)
    if out.exists() and any(out.iterdir()) and not (out / APPLIED).is_file():
        raise ShopeeError(f"--out {out}: exists and was not written by --apply; choose a new folder (nothing was written)")
    cleaned = table.copy()
    cleaned[D.LABEL] = cleaned[D.LABEL].astype(str)
    decided = fixes[fixes[ACTION].isin((RELABEL, DROP))].drop_duplicates(D.ID, keep="last")
    relabel = decided[decided[ACTION] == RELABEL].set_index(D.ID)[NEW_GROUP]
    at = cleaned[D.ID].isin(relabel.index)
    cleaned.loc[at, D.LABEL] = cleaned.loc[at, D.ID].map(relabel)
    cleaned = cleaned[~cleaned[D.ID].isin(decided.loc[decided[ACTION] == DROP, D.ID])]
    for old, new in fixes.loc[fixes[ACTION] == MERGE, [D.LABEL, NEW_GROUP]].itertuples(index=False):
        cleaned.loc[cleaned[D.LABEL] == str(old), D.LABEL] = str(new)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "train_images").mkdir(parents=True)
        for path, image in zip(cleaned[D.PATH], cleaned[D.IMAGE]):
            link = tmp / "train_images" / image
            if not link.exists():
                os.symlink(Path(path).resolve(), link)
        for extra in ("test.csv", "test_images"):
            if (data / extra).exists():
                os.symlink((data / extra).resolve(), tmp / extra)
        write_text(tmp / "train.csv", cleaned.drop(columns=[D.PATH]).to_csv(index=False))
        write_text(tmp / APPLIED, f"cleaned from {data.resolve()} by shopee-fastai audit --apply\n")
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise ShopeeError(f"--out {out}: cannot write the cleaned folder ({e.strerror}); choose a writable folder") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def decide(path: Path, row: int, action: str, new_group: str | None = None) -> pd.DataFrame:
    """Set finding `row`'s action in fixes.csv (and its group, for a relabel or merge), rewriting the file atomically."""
    if action not in ACTIONS:
        raise ShopeeError(f"action {action!r}: choose one of {', '.join(ACTIONS)}")
    fixes = read_fixes(path)
    if not 0 <= row < len(fixes):
        raise ShopeeError(f"{path}: no finding {row}; it has {len(fixes)}")
    fixes.loc[row, ACTION] = action
    if new_group is not None:
        fixes.loc[row, NEW_GROUP] = new_group
    with atomic_path(Path(path)) as tmp:
        fixes.to_csv(tmp, index=False)
    return fixes


def proposed(kind: str) -> str:
    """The action a finding's suggestion stands for: a merge for two groups that are one product, a drop for a
    photo unlike the rest or unreadable (they suggest no group), else a relabel."""
    return {SAME_PRODUCT: MERGE, OUTLIER: DROP, UNREADABLE: DROP}.get(kind, RELABEL)
