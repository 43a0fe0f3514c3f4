"""Data study of a Kaggle-layout table: the numbers and pictures that show what matching postings has to cope with.

Table statistics are vectorised pandas; image files are opened for their headers only (size, mode), on a seeded
sample when there are many, and pixels are decoded only for the few thumbnails in the figure grids.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import EDA_IMAGES
from .data import table as D
from .errors import ShopeeError
from .io import write_json, write_text
from .plots import GRID_MAX, figure, image_grid

WORKERS = 8  # header reads wait on the disk more than on the CPU
LIST_MAX = 20  # missing/unreadable files named in report.md (summary.json names all)
ANNOTATE_MAX = 12  # distinct image sizes up to which the scatter labels each with its file count
MISSING = "file not found"
OPTIONAL_COLUMNS = {D.PHASH: "identical-phash groups", D.TITLE: "identical-title groups"}  # what each one allows
SHARED_COLUMNS = (D.IMAGE, D.PHASH, D.TITLE)  # one value on several rows: a reused file, the same photo, the same title
GROUP_SIZES, LARGEST_GROUP, PHASH_GROUP, IMAGE_SIZES = "group_sizes.png", "largest_group.png", "phash_group.png", "image_sizes.png"
FIGURES = (GROUP_SIZES, LARGEST_GROUP, PHASH_GROUP, IMAGE_SIZES)
REPORT, SUMMARY = "report.md", "summary.json"


def _first_largest(counts: pd.Series) -> Any:
    """The key with the highest count, ties broken by name so the choice is stable."""
    return counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable").index[0]


def _label_groups(df: pd.DataFrame) -> dict[str, Any]:
    counts = df[D.LABEL].value_counts()
    sizes = counts.value_counts().sort_index()
    top = _first_largest(counts)
    return {"count": int(len(counts)), "largest": {"label_group": str(top), "size": int(counts[top])},
            "median_size": float(counts.median()), "size_counts": {int(k): int(v) for k, v in sizes.items()},
            "share_of_size_2": round(int(sizes.get(2, 0)) / len(counts), 4)}


def _shared(df: pd.DataFrame, col: str) -> dict[str, Any]:
    """Values on more than one row, and how many of them span label groups (one photo or title, several products)."""
    per = df.groupby(col)[D.LABEL].agg(["size", "nunique"])
    shared = per[per["size"] > 1]
    return {"shared_values": int(len(shared)),
            "rows_in_shared": int(shared["size"].sum()),
            "largest": int(per["size"].max()) if len(per) else 0,
            "largest_value": str(_first_largest(shared["size"])) if len(shared) else None,
            "cross_label_groups": int((shared["nunique"] > 1).sum()),
            "max_label_groups": int(per["nunique"].max()) if len(per) else 0}


def _header(path: str) -> tuple[int, int, str] | str:
    """(width, height, mode) as stored, from the header alone (no pixels decoded); or why the file cannot be read."""
    try:
        with Image.open(path) as im:
            return im.width, im.height, im.mode
    except FileNotFoundError:
        return MISSING
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def _spread(values: np.ndarray) -> dict[str, float] | None:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())} if len(values) else None


def _images(names: np.ndarray, folder: Path, max_images: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Header statistics of the unique image files (a seeded sample of `max_images` when there are more), and their sizes."""
    names = np.sort(names)
    sampled = len(names) > max_images
    if sampled:
        names = np.sort(np.random.default_rng(seed).choice(names, max_images, replace=False))
    with ThreadPoolExecutor(WORKERS) as pool:
        heads = list(pool.map(_header, [str(folder / n) for n in names]))
    read = [h for h in heads if isinstance(h, tuple)]
    sizes = np.array([h[:2] for h in read], dtype=int).reshape(-1, 2)
    failed = {str(n): h for n, h in zip(names, heads) if isinstance(h, str)}
    return {"folder": str(folder), "checked": len(names), "sampled": sampled, "seed": seed, "readable": len(read),
            "width": _spread(sizes[:, 0]), "height": _spread(sizes[:, 1]),
            "modes": dict(Counter(h[2] for h in read).most_common()),
            "missing": [n for n, r in failed.items() if r == MISSING],
            "unreadable": {n: r for n, r in failed.items() if r != MISSING}}, sizes


def _group_sizes_figure(dest: Path, size_counts: dict[int, int]) -> None:
    with figure(dest, (7, 4)) as fig:
        ax = fig.subplots()
        ax.bar(list(size_counts), list(size_counts.values()), width=0.8)
        ax.set(xlabel="images per label group", ylabel="label groups", title="Label-group sizes")
        if max(size_counts.values()) > 50 * min(size_counts.values()):
            ax.set_yscale("log")


def _image_sizes_figure(dest: Path, sizes: np.ndarray, images: dict[str, Any]) -> None:
    with figure(dest, (5.5, 5)) as fig:
        ax = fig.subplots()
        pairs, counts = np.unique(sizes, axis=0, return_counts=True)  # many files share a size: area shows how many
        ax.scatter(pairs[:, 0], pairs[:, 1], s=10 + 290 * counts / counts.max(), alpha=0.4)
        if len(pairs) <= ANNOTATE_MAX:
            for (w, h), n in zip(pairs, counts):
                ax.annotate(f"{n:,}", (w, h), textcoords="offset points", xytext=(6, 6), fontsize=8)
        sample = f"sample of {images['checked']:,} files" if images["sampled"] else "all files"
        ax.set(xlabel="width (px)", ylabel="height (px)", title=f"Image sizes as stored ({sample}; area ~ files)")


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(map(cell, r))} |" for r in rows), ""]


def _report(s: dict[str, Any]) -> str:
    g, im, shared = s["label_groups"], s["images"], s["shared"]
    lines = [f"# Data study of {s['csv']}", "", f"{s['rows']:,} rows in `{s['data']}`.", ""]
    lines += [f"Skipped: {note}." for note in s["skipped"]] + ([""] if s["skipped"] else [])
    lines += ["## Columns", "", *_table(("column", "unique values"), [(c, f"{n:,}") for c, n in s["unique"].items()])]
    lines += ["## Label groups", "", *_table(("", "value"), [
        ("label groups", f"{g['count']:,}"), ("largest", f"{g['largest']['label_group']} ({g['largest']['size']} rows)"),
        ("median size", f"{g['median_size']:g}"), ("groups of exactly 2", f"{g['share_of_size_2']:.1%}")])]
    lines += [f"![label-group sizes]({GROUP_SIZES})", "", *_table(("group size", "label groups"), list(g["size_counts"].items()))]
    lines += [f"![largest label group]({LARGEST_GROUP})", "", "## Values shared by several rows", ""]
    lines += _table(("column", "values on >1 row", "rows", "largest (rows)", "largest value", "spanning >1 label group",
                     "most label groups for one value"),
                    [(c, v["shared_values"], v["rows_in_shared"], v["largest"], v["largest_value"] or "-",
                      v["cross_label_groups"], v["max_label_groups"]) for c, v in shared.items()])
    if PHASH_GROUP in s["figures"]:
        lines += [f"![largest identical-phash group]({PHASH_GROUP})", ""]
    elif D.PHASH in shared:
        lines += ["No image_phash is shared by more than one row.", ""]
    how = (f"**Sample-based**: headers of a random sample of {im['checked']:,} of the {s['unique'][D.IMAGE]:,} unique "
           f"image files (seed {im['seed']})" if im["sampled"] else f"Headers of all {im['checked']:,} unique image files")
    lines += ["## Image files", "", f"{how} in `{im['folder']}`; {im['readable']:,} could be read.", ""]
    if im["width"]:
        lines += _table(("", "min", "median", "max"), [(k, *(f"{v:g}" for v in im[k].values())) for k in ("width", "height")])
        lines += _table(("mode", "files"), list(im["modes"].items()))
        lines += [f"![image sizes]({IMAGE_SIZES})", ""]
    for label, bad in (("Missing", {n: MISSING for n in im["missing"]}), ("Unreadable", im["unreadable"])):
        if bad:
            more = f" (first {LIST_MAX} listed; all in {SUMMARY})" if len(bad) > LIST_MAX else ""
            lines += [f"{label} files: {len(bad):,}{more}", "", *(f"- `{n}`: {r}" for n, r in list(bad.items())[:LIST_MAX]), ""]
    return "\n".join(lines)


def eda(data: Path, out: Path, csv_name: str = "train.csv", max_images: int = EDA_IMAGES, seed: int = 0) -> dict[str, Any]:
    """Compute the summary, write out/report.md + PNG figures + out/summary.json atomically, return the summary dict."""
    if max_images < 1:
        raise ShopeeError(f"--max-images {max_images}: must be at least 1 (image headers are read on a sample this size)")
    data, out = Path(data), Path(out)
    df = D.read_table(data, csv_name)
    present = [c for c in D.KAGGLE_COLUMNS if c in df.columns]
    skipped = [f"no {c} column, so {what} are not studied" for c, what in OPTIONAL_COLUMNS.items() if c not in df.columns]
    groups = _label_groups(df)
    shared = {c: _shared(df, c) for c in SHARED_COLUMNS if c in df.columns}
    images, sizes = _images(df[D.IMAGE].unique(), D.images_dir(data, csv_name), max_images, seed)
    s: dict[str, Any] = {"data": str(data), "csv": csv_name, "rows": int(len(df)),
                         "unique": {c: int(df[c].nunique()) for c in present}, "skipped": skipped,
                         "label_groups": groups, "shared": shared, "images": images, "figures": [],
                         "report": str(out / REPORT)}

    _group_sizes_figure(out / GROUP_SIZES, groups["size_counts"])
    top = df[df[D.LABEL] == groups["largest"]["label_group"]]
    image_grid(out / LARGEST_GROUP, top[D.PATH].tolist(), top[D.ID].tolist(),
          f"Largest label group {groups['largest']['label_group']} ({min(len(top), GRID_MAX)} of {len(top)} shown)")
    s["figures"] += [GROUP_SIZES, LARGEST_GROUP]
    phash = shared.get(D.PHASH, {}).get("largest_value")
    if phash is not None:
        rows = df[df[D.PHASH] == phash]
        image_grid(out / PHASH_GROUP, rows[D.PATH].tolist(), [f"{i}\ngroup {g}" for i, g in zip(rows[D.ID], rows[D.LABEL])],
              f"image_phash {phash}: {len(rows)} rows in {rows[D.LABEL].nunique()} label group(s)")
        s["figures"].append(PHASH_GROUP)
    if len(sizes):
        _image_sizes_figure(out / IMAGE_SIZES, sizes, images)
        s["figures"].append(IMAGE_SIZES)
    for stale in set(FIGURES) - set(s["figures"]):  # a figure left from an earlier run would not match this report
        (out / stale).unlink(missing_ok=True)
    write_text(out / REPORT, _report(s))
    write_json(out / SUMMARY, s)
    return s


def format_summary(summary: dict[str, Any]) -> str:
    """A short multi-line terminal summary (the key numbers)."""
    s, g, im = summary, summary["label_groups"], summary["images"]
    lines = [f"{s['rows']:,} rows; unique: " + ", ".join(f"{c} {n:,}" for c, n in s["unique"].items()),
             f"label groups: {g['count']:,}, largest {g['largest']['label_group']} ({g['largest']['size']} rows), "
             f"median size {g['median_size']:g}, {g['share_of_size_2']:.1%} of exactly 2"]
    for col, v in s["shared"].items():
        lines.append(f"{col} on >1 row: {v['shared_values']:,} values (largest {v['largest']} rows), "
                     f"{v['cross_label_groups']:,} spanning >1 label group (at most {v['max_label_groups']})")
    lines += [f"skipped: {note}" for note in s["skipped"]]
    how = f"a sample of {im['checked']:,}, seed {im['seed']}" if im["sampled"] else f"all {im['checked']:,}"
    line = f"image headers ({how}): {im['readable']:,} read, {len(im['missing']):,} missing, {len(im['unreadable']):,} unreadable"
    if im["width"]:
        line += "; width {min}/{median:g}/{max}".format(**im["width"]) + ", height {min}/{median:g}/{max} (min/median/max)".format(**im["height"])
        line += "; modes " + ", ".join(f"{m} {n:,}" for m, n in im["modes"].items())
    return "\n".join([*lines, line, f"report: {s['report']}"])
