"""Find what is wrong in a Kaggle-layout catalogue: listings filed under the wrong group, groups that are one
product, photos unlike the rest, and the same photo filed under two groups.

Every photo's group is judged by something that never saw its label. Groups large enough to
cross-validate get out-of-fold probabilities of the default recipe's head (training/folds.py), and
cleanlab's confident learning flags and ranks their labels. Smaller groups (most Shopee groups hold 2
listings) are judged by their nearest photos' votes: flagged where another group outvotes their own. A
title that disagrees with its group is evidence beside the photo, unless `titles` is off. The body runs
once: its pooled features are the cached embeddings that `split` and `match` also use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.dataset import find_overlapping_classes
from cleanlab.filter import find_label_issues
from cleanlab.outlier import OutOfDistribution
from cleanlab.rank import get_label_quality_scores
from sklearn.feature_extraction.text import TfidfVectorizer

from ..config import AUDIT_CV_MIN, AUDIT_DUP_THRESHOLD, AUDIT_FOLDS, AUDIT_NEIGHBOURS, AUDIT_OUT, OFFLINE_ARCH, SEED
from ..data import table as D
from ..errors import ShopeeError
from ..inference.embed import embeddings_for
from ..matching import knn
from ..training.folds import out_of_fold

WRONG_GROUP, SAME_PRODUCT, DUPLICATE, OUTLIER, UNREADABLE = "wrong_group", "same_product", "duplicate", "outlier", "unreadable"
KINDS = (WRONG_GROUP, SAME_PRODUCT, DUPLICATE, OUTLIER, UNREADABLE)  # the order findings are listed and reviewed in
CROSS_VALIDATION, NEIGHBOURS = "cross-validation", "neighbours"
SUGGESTED, SUGGESTED_TITLE = "suggested_group", "suggested_title"
KIND, SCORE, METHOD = "kind", "score", "method"
COLUMNS = [D.ID, D.IMAGE, KIND, SCORE, METHOD, D.LABEL, D.TITLE, SUGGESTED, SUGGESTED_TITLE]
MERGE_MIN_SHARE = 0.2  # a pair of groups is a merge candidate when this share of the smaller one looks like the other
OUTLIER_FENCE = 3.0  # outliers lie this many IQRs below the lower quartile of typicality (Tukey's far-out fence)
TITLE_WEIGHT = 0.5  # the title's share of the evidence, beside the photo's
VOTE_TEMPERATURE = 0.05  # cosine similarity over which a neighbour's vote falls e-fold
TITLE_CHUNK = 1024  # titles compared at once: memory O(chunk x n)


@dataclass(frozen=True)
class AuditConfig:
    """What `audit` reads, how it judges, and where it writes; checked when made."""

    data: Path
    out: Path = AUDIT_OUT
    top_groups: int = 0  # 0: every group
    folds: int = AUDIT_FOLDS
    cv_min: int = AUDIT_CV_MIN  # groups with fewer photos are judged by neighbours
    neighbours: int = AUDIT_NEIGHBOURS
    titles: bool = True  # a title that disagrees with its group is evidence
    arch: str = OFFLINE_ARCH  # the pretrained body whose pooled features are judged
    dup_threshold: float = AUDIT_DUP_THRESHOLD
    seed: int = SEED

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for name, low in (("folds", 2), ("cv_min", 2), ("neighbours", 1), ("top_groups", 0)):
            if getattr(self, name) < low:
                raise ShopeeError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least {low}")
        if self.folds > self.cv_min:
            raise ShopeeError(f"--folds {self.folds}: larger than the smallest cross-validated group (--cv-min {self.cv_min} "
                              f"photos), so a fold would miss a group; lower --folds or raise --cv-min to {self.folds}")
        if not 0 < self.dup_threshold <= 1:
            raise ShopeeError(f"--dup-threshold {self.dup_threshold}: a cosine similarity in (0, 1]")
        check_out(self.out, self.data)


def check_out(out: Path, data: Path) -> None:
    """An output folder must not be the data folder or inside it: nothing written may touch the original."""
    o, d = Path(out).resolve(), Path(data).resolve()
    if o == d or d in o.parents:
        raise ShopeeError(f"--out {out}: is inside the data folder {data}, which the audit never changes; choose a folder "
                          "outside it, e.g. reports/audit")


@dataclass
class Audit:
    """What an audit found. `findings` has COLUMNS, one row per finding, in KINDS order and then by score."""

    table: pd.DataFrame  # the rows judged (readable photos)
    findings: pd.DataFrame
    quality: np.ndarray  # per row of `table`: cleanlab's label quality (low: likely wrong)
    method: np.ndarray  # per row of `table`: which method judged its label
    suggested: np.ndarray  # per row of `table`: the likeliest other group ("" where no other group has a vote)
    seconds: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {k: int((self.findings[KIND] == k).sum()) for k in KINDS}


def _weights(sims: np.ndarray) -> np.ndarray:
    """Votes by similarity, sharpened so that a near twin outvotes a crowd of look-alikes."""
    return np.exp((sims - sims.max(1, keepdims=True)) / VOTE_TEMPERATURE)


def neighbour_probs(sims: np.ndarray, idx: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """[n, n_classes]: each row's neighbours (itself excluded) voting for their classes; codes of -1 do not vote."""
    n, k = idx.shape
    labels, weights = codes[idx].ravel(), _weights(sims).ravel()
    rows = np.repeat(np.arange(n), k)
    probs = np.zeros((n, n_classes), np.float64)
    np.add.at(probs, (rows[labels >= 0], labels[labels >= 0]), weights[labels >= 0])
    probs += 1e-3 / n_classes  # no class is impossible: cleanlab needs every probability above 0
    return probs / probs.sum(1, keepdims=True)


def neighbour_votes(sims: np.ndarray, idx: np.ndarray, codes: np.ndarray, given: np.ndarray):
    """(the given group's share of the vote, the likeliest other group, its share) per row, without a dense
    [rows x groups] matrix: Shopee has 11,014 groups."""
    w = _weights(sims)
    w = w / w.sum(1, keepdims=True)
    labels = codes[idx]
    share = (w * (labels == given[:, None])).sum(1)
    other = np.where(labels == given[:, None], -1, labels)
    best, best_share = np.full(len(idx), -1), np.zeros(len(idx))
    for j in range(idx.shape[1]):
        cand = other[:, j]
        votes = (w * (other == cand[:, None])).sum(1)
        better = (cand >= 0) & (votes > best_share)
        best[better], best_share[better] = cand[better], votes[better]
    return share, best, best_share


def without_self(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """knn's rows with each row's own entry removed (it is first, unless an exact twin tied with it)."""
    rows = np.arange(len(idx))[:, None]
    keep = idx != rows
    drop_last = keep.all(1)  # the row itself fell out of the top k: drop the weakest instead
    keep[drop_last, -1] = False
    k = idx.shape[1] - 1
    return sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def title_neighbours(titles: pd.Series, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` listings whose titles are nearest each title (cosine of TF-IDF over character n-grams), the listing
    itself left out: (similarities, indices)."""
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit_transform(titles.fillna("").astype(str))
    n = tfidf.shape[0]
    k = min(k, n - 1)
    sims, idx = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    for start in range(0, n, TITLE_CHUNK):
        block = (tfidf[start : start + TITLE_CHUNK] @ tfidf.T).toarray()
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        idx[start : start + len(block)] = top
        sims[start : start + len(block)] = np.take_along_axis(block, top, 1)
    return sims, idx


def judge_labels(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged, label quality, suggested class): cleanlab's confident learning over probabilities that never saw
    their row's label; the suggestion is the likeliest other class."""
    quality = get_label_quality_scores(labels, probs)
    flagged = find_label_issues(labels, probs) if len(np.unique(labels)) > 1 else np.zeros(len(labels), bool)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1
    return flagged, quality, other.argmax(1)


def judge(labels: np.ndarray, photo: np.ndarray, title: np.ndarray | None, how: str):
    """(flagged, quality, suggested, method) for cross-validated rows from the photo's probabilities and, if
    given, the title's.

    Either one disagreeing with the group flags a listing (a photo unlike its title is a finding too); the
    ranking's quality weighs both, so a listing both disagree with comes first.
    """
    f, q, s = judge_labels(labels, photo)
    methods = np.full(len(labels), how, object)
    if title is None:
        return f, q, s, methods
    ft, qt, _ = judge_labels(labels, title)
    methods[ft & ~f] = f"{how} (title)"
    methods[ft & f] = f"{how} + title"
    both = (1 - TITLE_WEIGHT) * photo + TITLE_WEIGHT * title
    both[np.arange(len(labels)), labels] = -1
    return f | ft, (1 - TITLE_WEIGHT) * q + TITLE_WEIGHT * qt, both.argmax(1), methods


def judge_by_votes(photo: tuple, title: tuple | None, how: str):
    """The same for rows judged by their neighbours' votes: flagged where another group outvotes the given one."""
    share, best, best_share = photo
    f = best_share > share
    methods = np.full(len(share), how, object)
    if title is None:
        return f, share, best, methods
    t_share, t_best, t_best_share = title
    ft = t_best_share > t_share
    methods[ft & ~f] = f"{how} (title)"
    methods[ft & f] = f"{how} + title"
    suggested = np.where((ft & ~f) | (best < 0), t_best, best)
    return f | ft, (1 - TITLE_WEIGHT) * share + TITLE_WEIGHT * t_share, suggested, methods


def _merge_pairs(pairs: dict, a: int, b: int, score: float, method: str) -> None:
    key = (min(a, b), max(a, b))
    if score > pairs.get(key, (0.0, ""))[0]:
        pairs[key] = (score, method)


def audit(cfg: AuditConfig, progress: bool = True) -> Audit:
    """Judge every readable listing of `cfg.data`; nothing is written (report.write_audit does that)."""
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    table, skipped = D.drop_unreadable(D.largest_groups(D.read_table(cfg.data), cfg.top_groups))
    labels = table[D.LABEL].astype(str).to_numpy()
    groups, codes = np.unique(labels, return_inverse=True)
    if len(groups) < 2:
        raise ShopeeError(f"{cfg.data / 'train.csv'}: one label group only ({groups[0] if len(groups) else 'none readable'}); "
                          "an audit judges listings against other groups, so it needs at least 2")
    titles = D.group_titles(table)
    files = list(dict.fromkeys(table[D.PATH]))  # each file once, in the order `split` embeds them: one cache serves both
    emb = embeddings_for(files, cfg.arch, progress=progress)[pd.Index(files).get_indexer(table[D.PATH])]
    seconds["embed"] = time.perf_counter() - began
    n, sizes = len(table), np.bincount(codes)
    sims, idx = without_self(*knn(emb, min(cfg.neighbours + 1, n)))
    by_title = title_neighbours(table[D.TITLE], cfg.neighbours) if cfg.titles and D.TITLE in table else None

    quality, method = np.full(n, np.nan), np.full(n, "", object)
    flagged, suggested = np.zeros(n, bool), np.full(n, -1)
    pairs: dict[tuple[int, int], tuple[float, str]] = {}
    cv = sizes[codes] >= cfg.cv_min
    if len(np.unique(codes[cv])) < 2:
        cv[:] = False
    t = time.perf_counter()
    if cv.any():
        classes = np.unique(codes[cv])
        local = np.searchsorted(classes, codes[cv])
        probs = out_of_fold(emb[cv], local, len(classes), cfg.folds, cfg.seed)
        to_local = np.full(len(groups), -1)
        to_local[classes] = np.arange(len(classes))
        text = (neighbour_probs(by_title[0][cv], by_title[1][cv], to_local[codes], len(classes))
                if by_title is not None else None)
        f, q, s, how = judge(local, probs, text, CROSS_VALIDATION)
        rows = np.flatnonzero(cv)
        flagged[rows], quality[rows], suggested[rows], method[rows] = f, q, classes[s], how
        overlaps = find_overlapping_classes(labels=local, pred_probs=probs)
        cv_sizes = np.bincount(local, minlength=len(classes))
        for a, b, num in overlaps[["Class Index A", "Class Index B", "Num Overlapping Examples"]].itertuples(index=False):
            _merge_pairs(pairs, classes[a], classes[b], num / min(cv_sizes[a], cv_sizes[b]), "overlapping classes")
    seconds["cross-validation"] = time.perf_counter() - t
    small = ~cv
    if small.any():
        photo = neighbour_votes(sims[small], idx[small], codes, codes[small])
        text = neighbour_votes(by_title[0][small], by_title[1][small], codes, codes[small]) if by_title is not None else None
        f, q, s, how = judge_by_votes(photo, text, NEIGHBOURS)
        rows = np.flatnonzero(small)
        flagged[rows], quality[rows], suggested[rows], method[rows] = f, q, s, how

    found = []
    for i in np.flatnonzero(flagged):
        found.append((i, WRONG_GROUP, 1 - quality[i], method[i], suggested[i]))
    twins = _twins(table, emb, sims, idx, codes, cfg.dup_threshold)
    for (i, j), (score, how) in twins.items():
        first, other = (i, j) if quality[i] <= quality[j] else (j, i)  # list the likelier mislabel of the two
        found.append((first, DUPLICATE, score, how, codes[other]))
    shared = pd.Series([(min(codes[i], codes[j]), max(codes[i], codes[j])) for i, j in twins]).value_counts()
    for (a, b), count in shared.items():
        _merge_pairs(pairs, a, b, min(1.0, count / min(sizes[a], sizes[b])), "near-duplicates")
    typical = OutOfDistribution(params={"k": min(cfg.neighbours, n - 1)}).fit_score(features=emb, verbose=False)
    q1, q3 = np.percentile(typical, [25, 75])
    for i in np.flatnonzero(typical < q1 - OUTLIER_FENCE * (q3 - q1)):
        found.append((i, OUTLIER, 1 - typical[i], "embedding neighbours", -1))
    rows = [_row(table, i, kind, score, how, codes[i], sug, groups, titles) for i, kind, score, how, sug in found]
    for (a, b), (score, how) in pairs.items():
        if score >= MERGE_MIN_SHARE:
            small_group, big = (a, b) if sizes[a] <= sizes[b] else (b, a)
            i = int(np.flatnonzero(codes == small_group)[0])
            rows.append({**_row(table, i, SAME_PRODUCT, score, how, small_group, big, groups, titles), D.ID: ""})
    rows += [{D.ID: r[D.ID], D.IMAGE: Path(r[D.PATH]).name, KIND: UNREADABLE, SCORE: 1.0, METHOD: "decode",
              D.LABEL: "", D.TITLE: r["reason"], SUGGESTED: "", SUGGESTED_TITLE: ""} for _, r in skipped.iterrows()]
    findings = pd.DataFrame(rows, columns=COLUMNS)
    findings[SCORE] = findings[SCORE].astype(float).round(4)
    findings = findings.sort_values([KIND, SCORE], key=lambda c: c.map(KINDS.index) if c.name == KIND else -c,
                                    kind="stable")
    once = (findings[KIND] != DUPLICATE) | ~findings.duplicated([KIND, D.ID])  # a photo's best twin only
    findings = findings[once].reset_index(drop=True)
    seconds["total"] = time.perf_counter() - began
    return Audit(table, findings, quality, method, np.where(suggested >= 0, groups[suggested].astype(str), ""), seconds)


def _row(table: pd.DataFrame, i: int, kind: str, score: float, how: str, given: int, suggested: int,
         groups: np.ndarray, titles: dict[str, str]) -> dict:
    g, s = str(groups[given]), (str(groups[suggested]) if suggested >= 0 else "")
    return {D.ID: table[D.ID].iat[i], D.IMAGE: table[D.IMAGE].iat[i], KIND: kind, SCORE: float(score), METHOD: how,
            D.LABEL: g, D.TITLE: titles.get(g, ""), SUGGESTED: s, SUGGESTED_TITLE: titles.get(s, "")}


def _twins(table: pd.DataFrame, emb: np.ndarray, sims: np.ndarray, idx: np.ndarray, codes: np.ndarray,
           threshold: float) -> dict[tuple[int, int], tuple[float, str]]:
    """{(i, j): (similarity, how)} for photos filed under different groups that are the same image file, share a
    perceptual hash, or whose embeddings are near-duplicates."""
    out: dict[tuple[int, int], tuple[float, str]] = {}
    for column, how in ((D.IMAGE, "same file"), (D.PHASH, "phash")):
        if column not in table:
            continue
        for _, rows in table.groupby(column).indices.items():
            for a in rows:
                for b in rows:
                    if a < b and codes[a] != codes[b] and (a, b) not in out:
                        out[(a, b)] = (1.0, how)
    rows, cols = np.nonzero(sims >= threshold)
    for i, j in zip(rows, idx[rows, cols]):
        a, b = min(i, j), max(i, j)
        if codes[a] != codes[b] and (a, b) not in out:
            out[(int(a), int(b))] = (float(emb[a] @ emb[b]), "embedding")
    return out
