"""Kaggle-layout tables: read and check them, clean them as the study did, and drop rows whose photo cannot be read."""

from __future__ import annotations

import shutil
import warnings
from functools import partial
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config import SEED, TOP_GROUPS
from ..errors import ShopeeError
from ..io import write_text
from .images import decode_chunks, load_rgb

ID, IMAGE, PHASH, TITLE, LABEL = "posting_id", "image", "image_phash", "title", "label_group"
KAGGLE_COLUMNS = (ID, IMAGE, PHASH, TITLE, LABEL)
REQUIRED_COLUMNS = (ID, IMAGE)  # label_group too, where labels are needed
PATH = "path"  # added to every table: the row's image file
MIN_TRAIN_IMAGES = 2  # below this many readable training images there is nothing to learn from
SAMPLE_DIR = Path(__file__).parents[1] / "sample"


def copy_sample(dest: Path) -> bool:
    """Copy the bundled sample to `dest`, all or nothing; False when it is already there."""
    dest = Path(dest)
    if (dest / "train.csv").is_file() and (dest / "train.csv").read_bytes() == (SAMPLE_DIR / "train.csv").read_bytes():
        return False
    if dest.exists():
        raise ShopeeError(f"{dest}: already exists and is not the sample; choose a new folder")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SAMPLE_DIR, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    tmp.rename(dest)
    return True


def images_dir(data: Path, csv_name: str = "train.csv") -> Path:
    """`train.csv` pairs with `train_images/`, `test.csv` with `test_images/` (Kaggle's layout)."""
    return Path(data) / f"{Path(csv_name).stem}_images"


def read_table(data: Path, csv_name: str = "train.csv", labels: bool = True) -> pd.DataFrame:
    """Read a Kaggle-layout CSV, checking what later steps rely on, and add each row's image path."""
    data = Path(data)
    if not data.is_dir():
        raise ShopeeError(f"{data}: no such data folder; pass --data a folder holding {csv_name} and {images_dir(data, csv_name).name}/")
    csv = data / csv_name
    if not csv.is_file():
        raise ShopeeError(f"{csv}: file not found; a Kaggle-layout folder holds {csv_name} beside {images_dir(data, csv_name).name}/")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ShopeeError(f"{csv}: not a readable CSV ({str(e).splitlines()[0]}); it needs a header row with {','.join(KAGGLE_COLUMNS)}") from e
    needed = REQUIRED_COLUMNS + ((LABEL,) if labels else ())
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ShopeeError(f"{csv}: missing column(s) {', '.join(missing)}; the header must include {','.join(needed)}")
    if df.empty:
        raise ShopeeError(f"{csv}: no rows; add at least one posting per label group")
    for col in needed:
        empty = df.index[df[col].isna()]
        if len(empty):
            raise ShopeeError(f"{csv}: row {empty[0] + 2} has an empty {col} ({len(empty)} such rows); fill or remove them")
    dup = df[ID].duplicated(keep=False)
    if dup.any():
        rows = (df.index[dup][:2] + 2).tolist()
        raise ShopeeError(f"{csv}: posting_id {df.loc[dup, ID].iloc[0]!r} is repeated (rows {rows[0]} and {rows[1]}); posting_ids must be unique")
    df[PATH] = [str(images_dir(data, csv_name) / name) for name in df[IMAGE]]
    return df


def largest_groups(df: pd.DataFrame, top_groups: int) -> pd.DataFrame:
    """The rows of the `top_groups` largest label groups (0 keeps all); ties broken by name, so the choice is stable."""
    if not top_groups:
        return df.reset_index(drop=True)
    counts = df[LABEL].value_counts()
    order = sorted(counts.index, key=lambda g: (-counts[g], g))
    return df[df[LABEL].isin(order[:top_groups])].reset_index(drop=True)


def clean(df: pd.DataFrame, top_groups: int = TOP_GROUPS) -> pd.DataFrame:
    """The study's cleaning: keep the `top_groups` largest label groups (0 keeps all), then drop reused image files."""
    return largest_groups(df, top_groups).drop_duplicates(subset=IMAGE, keep="first").reset_index(drop=True)


def calibration_photos(df: pd.DataFrame, seed: int = SEED) -> list[str]:
    """`df`'s photos in a seeded random order: an int8 graph calibrates on the first INT8_PHOTOS of them."""
    return df[PATH].sample(frac=1.0, random_state=seed).tolist()


def group_titles(df: pd.DataFrame) -> dict[str, str]:
    """Each label group's most common title (ties: the first seen): what a person reads instead of the group's number."""
    if TITLE not in df.columns or LABEL not in df.columns:
        return {}
    rows = df.dropna(subset=[TITLE, LABEL])
    return {str(g): str(t.value_counts(sort=True).index[0]) for g, t in rows.groupby(LABEL, sort=True)[TITLE]}


def find_unreadable(paths: Sequence[str]) -> dict[str, str]:
    """Decode every image (reduced-size JPEG decoding keeps this cheap) and return {path: reason} for those that fail;
    a chunk's images are dropped once checked, so memory stays flat at Shopee's size."""
    return {paths[i]: err for part in decode_chunks(paths, partial(load_rgb, draft_size=64))
            for i, _, err in part if err is not None}


def drop_unreadable(df: pd.DataFrame, report: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Skip images that cannot be decoded, warn once, and return (kept rows, skipped rows with reasons)."""
    bad = find_unreadable(df[PATH].tolist())
    skipped = df[df[PATH].isin(bad)].assign(reason=lambda d: d[PATH].map(bad))[[ID, PATH, "reason"]]
    if len(skipped):
        where = ""
        if report is not None:
            write_text(report, skipped.to_csv(index=False))
            where = f"; listed in {report}"
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped['reason'].iloc[0]}{where}", stacklevel=2)
    return df[~df[PATH].isin(bad)].reset_index(drop=True), skipped


