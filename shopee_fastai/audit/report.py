"""An audit's files, each written atomically: issues.csv, report.md, contact.png and fixes.csv (decisions a person
already made in an earlier fixes.csv are kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import table as D
from ..data.images import decode_all
from ..io import atomic_path, write_json, write_text
from ..plots import figure, thumbnail
from .find import KIND, KINDS, METHOD, SCORE, SUGGESTED, SUGGESTED_TITLE, Audit
from .fixes import fixes_table, read_fixes

ISSUES, REPORT, CONTACT, FIXES, SUMMARY = "issues.csv", "report.md", "contact.png", "fixes.csv", "audit.json"
SHEET_ROWS = 12  # findings on the contact sheet
REPORT_TOP = 10  # findings per kind listed in report.md


def group_photos(table: pd.DataFrame, group: str, other_than: str = "", n: int = 1) -> list[str]:
    """Up to `n` photos of `group` (not listing `other_than`), to show beside a finding."""
    rows = table[(table[D.LABEL].astype(str) == str(group)) & (table[D.ID] != other_than)]
    return [str(p) for p in rows[D.PATH].head(n)]


def sheet_rows(result: Audit) -> pd.DataFrame:
    """The findings on the contact sheet: the top of each kind in turn, up to SHEET_ROWS."""
    f = result.findings[result.findings[SUGGESTED] != ""]
    kinds = [k for k in KINDS if (f[KIND] == k).any()]
    per = max(1, SHEET_ROWS // max(1, len(kinds)))
    return pd.concat([f[f[KIND] == k].head(per) for k in kinds]).head(SHEET_ROWS) if kinds else f


def contact_sheet(dest: Path, result: Audit) -> None:
    """Each finding's photo with its given group, beside a photo of the suggested group."""
    rows = sheet_rows(result)
    path_of = dict(zip(result.table[D.IMAGE], result.table[D.PATH]))
    pairs = [(path_of.get(r[D.IMAGE]), next(iter(group_photos(result.table, r[SUGGESTED], r[D.ID])), None))
             for _, r in rows.iterrows()]
    thumbs = decode_all([p or "" for pair in pairs for p in pair], thumbnail)
    n = max(1, len(rows))
    with figure(dest, (6.4, 2.3 * n + 0.4)) as fig:
        fig.suptitle(f"audit: top {len(rows)} findings (left: the listing; right: the suggested group)", fontsize=9)
        axes = fig.subplots(n, 2, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for k, (_, r) in enumerate(rows.iterrows()):
            for side, caption in ((0, f"{r[KIND]} {r[SCORE]:.2f}\n{r[D.ID] or 'group'} · {r[D.LABEL]} {r[D.TITLE]}"[:80]),
                                  (1, f"suggested {r[SUGGESTED]} {r[SUGGESTED_TITLE]}"[:60])):
                im = thumbs[2 * k + side][0]
                if im is not None:
                    axes[k, side].imshow(np.asarray(im))
                axes[k, side].set_title(caption, fontsize=7)


def report_md(result: Audit, data: Path) -> str:
    counts = result.counts()
    f = result.findings
    lines = [f"# Audit of {data}", "", f"{len(result.table)} readable listings in {result.table[D.LABEL].nunique()} groups; "
             f"{sum(counts.values())} findings in {result.seconds.get('total', 0):.0f} s.", "",
             "| kind | findings | by |", "|---|---|---|"]
    for kind, n in counts.items():
        methods = ", ".join(f"{m} {c}" for m, c in f.loc[f[KIND] == kind, METHOD].value_counts().items())
        lines.append(f"| {kind} | {n} | {methods or '-'} |")
    for kind in KINDS:
        top = f[f[KIND] == kind].head(REPORT_TOP)
        if len(top):
            lines += ["", f"## {kind}: top {len(top)}", "", "| posting | score | given | suggested | by |", "|---|---|---|---|---|"]
            lines += [f"| {r[D.ID] or r[D.IMAGE]} | {r[SCORE]:.3f} | {r[D.LABEL]} {r[D.TITLE]} | {r[SUGGESTED]} {r[SUGGESTED_TITLE]} "
                      f"| {r[METHOD]} |" for _, r in top.iterrows()]
    lines += ["", f"Decide in {FIXES} (action: keep, relabel, drop or merge; empty changes nothing) or in `serve --audit`, "
              f"then `shopee-fastai audit --apply {FIXES} --data {data} --out CLEANED`.", ""]
    return "\n".join(lines)


def write_audit(result: Audit, out: Path, data: Path, settings: dict | None = None) -> dict[str, Path]:
    """Write the files into `out` (audit.json names the data folder, for `serve --audit`); an earlier fixes.csv
    there keeps its decisions for the same findings."""
    out = Path(out)
    paths = {name: out / name for name in (ISSUES, REPORT, CONTACT, FIXES, SUMMARY)}
    earlier = read_fixes(paths[FIXES]) if paths[FIXES].is_file() else None
    with atomic_path(paths[ISSUES]) as tmp:
        result.findings.to_csv(tmp, index=False)
    with atomic_path(paths[FIXES]) as tmp:
        fixes_table(result, earlier).to_csv(tmp, index=False)
    contact_sheet(paths[CONTACT], result)
    write_text(paths[REPORT], report_md(result, data))
    write_json(paths[SUMMARY], {"data": str(Path(data).resolve()), "listings": len(result.table), "counts": result.counts(),
                                "seconds": {k: round(v, 1) for k, v in result.seconds.items()}, "settings": settings or {}})
    return paths
