"""The work behind the Review tab: an audit's findings one at a time, with photos of both groups, and the
decisions written into its fixes.csv. No web code here."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..audit.find import KIND, METHOD, SCORE, SUGGESTED, SUGGESTED_TITLE, UNREADABLE
from ..audit.fixes import ACTION, DROP, KEEP, decide, proposed, read_fixes
from ..audit.report import FIXES, ISSUES, SUMMARY, group_photos
from ..data import table as D
from ..errors import ShopeeError

EXAMPLES = 3  # photos shown of the given and of the suggested group


@dataclass
class Review:
    """An audit folder (audit.json, issues.csv, fixes.csv) and the data it judged."""

    folder: Path
    findings: pd.DataFrame
    table: pd.DataFrame

    def __post_init__(self) -> None:
        self.lock = threading.Lock()  # one decision at a time: each rewrites fixes.csv

    @classmethod
    def load(cls, folder: Path) -> Review:
        folder = Path(folder)
        missing = [n for n in (SUMMARY, ISSUES, FIXES) if not (folder / n).is_file()]
        if missing:
            raise ShopeeError(f"--audit {folder}: no {', '.join(missing)} there; run `shopee-fastai audit --data DIR --out {folder}` first")
        data = Path(json.loads((folder / SUMMARY).read_text())["data"])
        findings = pd.read_csv(folder / ISSUES, dtype=str, keep_default_na=False)
        if len(read_fixes(folder / FIXES)) != len(findings):
            raise ShopeeError(f"--audit {folder}: {FIXES} and {ISSUES} list different findings; rerun the audit "
                              "(decisions already made are kept)")
        return cls(folder, findings, D.read_table(data))

    @property
    def fixes_path(self) -> Path:
        return self.folder / FIXES

    def decided(self) -> pd.Series:
        return read_fixes(self.fixes_path)[ACTION] != ""

    def next_open(self, after: int = -1) -> int | None:
        """The first undecided finding after `after` (wrapping round), or None when every one is decided."""
        open_ = [i for i, done in enumerate(self.decided()) if not done]
        return next((i for i in open_ if i > after), open_[0] if open_ else None)

    def photos(self, group: str, skip: str = "") -> list[Path]:
        return [Path(p) for p in group_photos(self.table, group, skip, EXAMPLES)]

    def card(self, i: int) -> dict[str, Any]:
        """Finding `i`: what it says, its photo, and photos of the given and suggested groups."""
        f = self.findings.iloc[i]
        photo = self.table.loc[self.table[D.IMAGE] == f[D.IMAGE], D.PATH] if f[KIND] != UNREADABLE else pd.Series([], dtype=str)
        return {"row": i, "of": len(self.findings), "posting_id": f[D.ID], "kind": f[KIND], "score": float(f[SCORE] or 0),
                "method": f[METHOD], "given": f[D.LABEL], "given_title": f[D.TITLE], "suggested": f[SUGGESTED],
                "suggested_title": f[SUGGESTED_TITLE], "proposed": proposed(f[KIND]),
                "photo": Path(photo.iloc[0]) if len(photo) else None,
                "given_photos": self.photos(f[D.LABEL], f[D.ID]), "suggested_photos": self.photos(f[SUGGESTED])}

    def decide(self, i: int, action: str) -> int | None:
        """Write finding `i`'s decision (keep, drop, or its proposed relabel/merge); the next undecided one."""
        if action not in (KEEP, DROP, "relabel", "merge"):
            raise ShopeeError(f"action {action!r}: choose keep, relabel, merge or drop")
        if action == DROP and not self.findings[D.ID].iat[i]:
            raise ShopeeError("this finding is a pair of groups, not one listing: keep them apart or merge them")
        with self.lock:
            decide(self.fixes_path, i, action)
        return self.next_open(i)

    def progress(self) -> tuple[int, int]:
        done = self.decided()
        return int(done.sum()), len(done)
