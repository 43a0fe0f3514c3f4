"""Kaggle-layout tables: read and check them, clean them as the study did, split them, and build fastai DataLoaders."""

from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ShopeeError
from .images import load_rgb

ID, IMAGE, PHASH, TITLE, LABEL = "posting_id", "image", "image_phash", "title", "label_group"
KAGGLE_COLUMNS = (ID, IMAGE, PHASH, TITLE, LABEL)
REQUIRED_COLUMNS = (ID, IMAGE)  # label_group too, where labels are needed
PATH, SPLIT, IS_VALID = "path", "split", "is_valid"
TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_TOP_GROUPS = 21
MIN_TRAIN_IMAGES = 2  # below this many readable training images there is nothing to learn from
SAMPLE_DIR = Path(__file__).parent / "sample"
AUGMENTATIONS = ("fastai", "strong", "study", "none")
# "strong": wider zoom, rotation and warp, stronger lighting, plus saturation and hue, for photos from other occasions
STRONG_AUG = {"max_rotate": 15.0, "max_zoom": 1.3, "max_warp": 0.3, "max_lighting": 0.4, "p_lighting": 0.9}
STRONG_COLOUR = {"saturation": 0.3, "hue": 0.05}


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


def clean(df: pd.DataFrame, top_groups: int = DEFAULT_TOP_GROUPS) -> pd.DataFrame:
    """The study's cleaning: keep the `top_groups` largest label groups (0 keeps all), then drop reused image files."""
    if top_groups:
        counts = df[LABEL].value_counts()
        order = sorted(counts.index, key=lambda g: (-counts[g], g))  # ties broken by name, so the choice is stable
        df = df[df[LABEL].isin(order[:top_groups])]
    return df.drop_duplicates(subset=IMAGE, keep="first").reset_index(drop=True)


def _check_one(path: str) -> str | None:
    try:
        load_rgb(path, draft_size=64)
        return None
    except ShopeeError as e:
        return str(e)


def find_unreadable(paths: Sequence[str], workers: int = 8) -> dict[str, str]:
    """Decode every image (reduced-size JPEG decoding keeps this cheap) and return {path: reason} for those that fail."""
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(_check_one, paths))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


def drop_unreadable(df: pd.DataFrame, report: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Skip images that cannot be decoded, warn once, and return (kept rows, skipped rows with reasons)."""
    from .io import write_text

    bad = find_unreadable(df[PATH].tolist())
    skipped = df[df[PATH].isin(bad)].assign(reason=lambda d: d[PATH].map(bad))[[ID, PATH, "reason"]]
    if len(skipped):
        where = ""
        if report is not None:
            write_text(report, skipped.to_csv(index=False))
            where = f"; listed in {report}"
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped['reason'].iloc[0]}{where}", stacklevel=2)
    return df[~df[PATH].isin(bad)].reset_index(drop=True), skipped


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
    seed: int = 42,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
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


def write_split(split: pd.Series, dest: Path) -> None:
    from .io import write_text

    write_text(dest, split.rename_axis(ID).reset_index().to_csv(index=False))


def read_split(src: Path) -> pd.Series:
    if not Path(src).is_file():
        raise ShopeeError(f"{src}: split file not found; it is written beside the model by `train`, retrain or pass the right --model")
    table = pd.read_csv(src, dtype=str)
    return pd.Series(table[SPLIT].values, index=table[ID].values, name=SPLIT)


def rows_in_split(df: pd.DataFrame, split: pd.Series, name: str) -> pd.DataFrame:
    return df[df[ID].map(split).eq(name)].reset_index(drop=True)


@dataclass(frozen=True)
class LoaderConfig:
    size: int = 224
    bs: int = 32
    aug: str = "fastai"
    workers: int | None = None  # None: 0 on CPU (measured faster), fastai's default (one per core) with CUDA
    seed: int = 42


def batch_augmentations(aug: str) -> list:
    """The batch transforms for `--aug`: fastai's `aug_transforms` (default or stronger), the study's flips and
    grayscale, or none."""
    from fastai.vision.augment import Hue, Saturation, aug_transforms

    from .transforms import StudyAugment

    if aug == "fastai":
        return aug_transforms()
    if aug == "strong":
        return aug_transforms(**STRONG_AUG, xtra_tfms=[Saturation(STRONG_COLOUR["saturation"]), Hue(STRONG_COLOUR["hue"])])
    if aug == "study":
        return [StudyAugment()]
    if aug == "none":
        return []
    raise ShopeeError(f"--aug {aug!r} is not known; choose one of {', '.join(AUGMENTATIONS)}")


def make_dataloaders(train_valid: pd.DataFrame, stats: tuple[Sequence[float], Sequence[float]], cfg: LoaderConfig):
    """fastai DataLoaders from rows carrying `path`, `label_group` and `split` (train/valid).

    Normalisation with the model's own statistics is part of the batch pipeline for every architecture,
    so it travels with the exported learner and applies to from-scratch models too.
    """
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import ColReader, ColSplitter, Normalize
    from fastai.vision.augment import Resize
    from fastai.vision.data import ImageBlock

    from .transforms import ShopeeImage

    block = DataBlock(
        blocks=(ImageBlock(cls=ShopeeImage), CategoryBlock),
        get_x=ColReader(PATH),
        get_y=ColReader(LABEL),
        splitter=ColSplitter(IS_VALID),
        item_tfms=Resize(cfg.size),
        batch_tfms=[*batch_augmentations(cfg.aug), Normalize.from_stats(*stats)],
    )
    frame = train_valid.assign(**{IS_VALID: train_valid[SPLIT].eq(VALID)})
    import torch

    kwargs = {} if cfg.workers is None else {"num_workers": cfg.workers}
    if torch.cuda.is_available():
        kwargs["pin_memory"] = True  # page-locked batches copy to the GPU asynchronously
    elif cfg.workers is None:
        # On CPU, loader processes take cores from the network, which already uses them all; loading in
        # the main process was faster at every size measured (bench/train_speed.py --workers).
        kwargs["num_workers"] = 0
    return block.dataloaders(frame, bs=cfg.bs, seed=cfg.seed, **kwargs)

