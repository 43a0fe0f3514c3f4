"""Find what is wrong in a Kaggle-layout catalogue: listings filed under the wrong group, groups that are one
product, photos unlike the rest, and the same photo filed under two groups.

Every photo's group is judged by something that never saw its label. Groups large enough to
cross-validate get out-of-fold probabilities of the default recipe's head (training/folds.py), and
cleanlab's confident learning flags and ranks their labels. Smaller groups (most Shopee groups hold 2
listings) are judged by their nearest photos' votes: flagged where another group outvotes their own. A
title that disagrees with its group is evidence beside the photo, unless `titles` is off. The body runs
once: its pooled features are the cached embeddings that `split` and `match` also use.

A pair of groups is a merge candidate on evidence from more than one photo (or one photo and the title); the
list is ranked and capped, since Shopee's 2-listing groups share one look-alike photo by the thousand.

`audit` runs one detector per kind of finding and lists what each found; the detectors below it are in the
order they run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from cleanlab.count import estimate_joint
from cleanlab.filter import find_label_issues
from cleanlab.outlier import OutOfDistribution
from cleanlab.rank import get_label_quality_scores

from ..config import (AUDIT_CV_MIN, AUDIT_DUP_THRESHOLD, AUDIT_FOLDS, AUDIT_MAX_MERGES, AUDIT_NEIGHBOURS, AUDIT_OUT,
                      OFFLINE_ARCH, SEED)
from ..data import table as D
from ..errors import ShopeeError
from ..inference.embed import embeddings_for
from ..machine import freed_memory_returned
from ..matching import knn, title_knn
from ..training.folds import out_of_fold

WRONG_GROUP, SAME_PRODUCT, DUPLICATE, OUTLIER, UNREADABLE = "wrong_group", "same_product", "duplicate", "outlier", "unreadable"
KINDS = (WRONG_GROUP, SAME_PRODUCT, DUPLICATE, OUTLIER, UNREADABLE)  # the order findings are listed and reviewed in
CROSS_VALIDATION, NEIGHBOURS = "cross-validation", "neighbours"
SUGGESTED, SUGGESTED_TITLE = "suggested_group", "suggested_title"
KIND, SCORE, METHOD = "kind", "score", "method"
COLUMNS = [D.ID, D.IMAGE, KIND, SCORE, METHOD, D.LABEL, D.TITLE, SUGGESTED, SUGGESTED_TITLE]
OUTLIER_FENCE = 3.0  # outliers lie this many IQRs below the lower quartile of typicality (Tukey's far-out fence)
TITLE_WEIGHT = 0.5  # the title's share of the evidence, beside the photo's
VOTE_TEMPERATURE = 0.05  # cosine similarity over which a neighbour's vote falls e-fold
MERGE_MIN_SHARE = 0.2  # a pair of groups is a merge candidate when this share of the smaller one looks like the other
MERGE_MIN_EVIDENCE = 2  # photos on each side (a title that agrees counts as one): one shared photo is a misfiled listing
MERGE_PRIOR = 2  # photos that shrink a merge's share towards 0 when ranking: 2 of 2 photos rank below 5 of 5
MERGE_TITLE_MIN = 0.8  # character n-gram cosine at which two titles say the same product, reworded or reordered
OUTLIER_WORKING_MEMORY = 256  # MiB per block of scikit-learn's distances behind cleanlab's typicality (its default: 1 GiB)
TRIM_EVERY = 2.0  # seconds between handing freed heap pages back to the system (an epoch of a fold's head takes ~2 s)


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
    max_merges: int = AUDIT_MAX_MERGES  # merge candidates listed, strongest first; 0: every one
    seed: int = SEED

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for name, low in (("folds", 2), ("cv_min", 2), ("neighbours", 1), ("top_groups", 0), ("max_merges", 0)):
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


@dataclass
class Verdicts:
    """Per listing: whether its group looks wrong, its label quality (low: likely wrong), the likeliest other group
    (-1 where no other group has a vote) and the method that judged it."""

    flagged: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    method: np.ndarray

    @classmethod
    def unjudged(cls, n: int) -> Verdicts:
        return cls(np.zeros(n, bool), np.full(n, np.nan), np.full(n, -1), np.full(n, "", object))

    def fill(self, rows: np.ndarray, part: Verdicts) -> None:
        """Put `part`, the verdicts on `rows`, in their place."""
        for name in ("flagged", "quality", "suggested", "method"):
            getattr(self, name)[rows] = getattr(part, name)


@dataclass
class CrossValidated:
    """The groups large enough to cross-validate: their rows, group codes, each row's column among them, and
    out-of-fold probabilities [rows, groups]."""

    rows: np.ndarray
    groups: np.ndarray
    columns: np.ndarray
    probs: np.ndarray


@dataclass
class Twins:
    """Pairs of photos filed under different groups that are one photo: rows `first` < `second`, their similarity
    and how they were found, in the order found (same file, then phash, then embedding)."""

    first: np.ndarray
    second: np.ndarray
    score: np.ndarray
    method: np.ndarray


@freed_memory_returned(TRIM_EVERY)
def audit(cfg: AuditConfig, progress: bool = True) -> Audit:
    """Judge every readable listing of `cfg.data`; nothing is written (report.write_audit does that)."""
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    table, skipped = D.drop_unreadable(D.largest_groups(D.read_table(cfg.data), cfg.top_groups))
    groups, codes = np.unique(table[D.LABEL].astype(str).to_numpy(), return_inverse=True)
    if len(groups) < 2:
        raise ShopeeError(f"{cfg.data / 'train.csv'}: one label group only ({groups[0] if len(groups) else 'none readable'}); "
                          "an audit judges listings against other groups, so it needs at least 2")
    emb = catalogue_embeddings(table, cfg.arch, progress)
    seconds["embed"] = time.perf_counter() - began
    photo_neighbours = without_self(*knn(emb, min(cfg.neighbours + 1, len(table))))
    title_neighbours = (title_knn(table[D.TITLE], cfg.neighbours, analyzer="char", include_self=False)
                        if cfg.titles and D.TITLE in table else None)

    started = time.perf_counter()
    verdicts = Verdicts.unjudged(len(table))
    cv = cross_validate(emb, codes, cfg.cv_min, cfg.folds, cfg.seed)
    if cv is not None:
        verdicts.fill(cv.rows, wrong_group_by_cross_validation(cv, codes, title_neighbours))
    seconds["cross-validation"] = time.perf_counter() - started
    small = np.setdiff1d(np.arange(len(table)), cv.rows) if cv is not None else np.arange(len(table))
    if len(small):
        verdicts.fill(small, wrong_group_by_votes(small, codes, photo_neighbours, title_neighbours))
    twins = duplicates(table, photo_neighbours, codes, cfg.dup_threshold)
    merges = merge_candidates(codes, twins, cv, title_neighbours, cfg.max_merges)
    odd, typicality = outliers(emb, cfg.neighbours)

    found = Findings(table, codes, groups, D.group_titles(table))
    flagged = np.flatnonzero(verdicts.flagged)
    findings = ranked([
        found.listings(flagged, WRONG_GROUP, 1 - verdicts.quality[flagged], verdicts.method[flagged],
                       verdicts.suggested[flagged]),
        found.twins(twins, verdicts.quality),
        found.listings(odd, OUTLIER, 1 - typicality[odd], "embedding neighbours", -1),
        found.merges(merges),
        found.unreadable(skipped),
    ])
    seconds["total"] = time.perf_counter() - began
    return Audit(table, findings, verdicts.quality, verdicts.method,
                 np.where(verdicts.suggested >= 0, groups[verdicts.suggested].astype(str), ""), seconds)


def catalogue_embeddings(table: pd.DataFrame, arch: str, progress: bool) -> np.ndarray:
    """[rows, d] pooled features of `arch`, one per listing; each file is embedded once, in the order `split`
    embeds them, so one cache serves both."""
    files = list(dict.fromkeys(table[D.PATH]))
    return embeddings_for(files, arch, progress=progress)[pd.Index(files).get_indexer(table[D.PATH])]


def without_self(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """knn's rows with each row's own entry removed (it is first, unless an exact twin tied with it)."""
    rows = np.arange(len(idx))[:, None]
    keep = idx != rows
    drop_last = keep.all(1)  # the row itself fell out of the top k: drop the weakest instead
    keep[drop_last, -1] = False
    k = idx.shape[1] - 1
    return sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def cross_validate(emb: np.ndarray, codes: np.ndarray, cv_min: int, folds: int, seed: int) -> CrossValidated | None:
    """Out-of-fold probabilities over the groups of at least `cv_min` photos; None where fewer than 2 groups are
    that large (there is nothing to tell apart)."""
    rows = np.flatnonzero(np.bincount(codes)[codes] >= cv_min)
    groups, columns = np.unique(codes[rows], return_inverse=True)
    if len(groups) < 2:
        return None
    return CrossValidated(rows, groups, columns, out_of_fold(emb[rows], columns, len(groups), folds, seed))


def wrong_group_by_cross_validation(cv: CrossValidated, codes: np.ndarray, title_neighbours: tuple | None) -> Verdicts:
    """Verdicts on the cross-validated rows: confident learning over their out-of-fold probabilities and, with
    titles, over their title neighbours' votes among the same groups."""
    title_probs = None
    if title_neighbours is not None:
        column_of = np.full(codes.max() + 1, -1)  # groups judged by votes have no column: their titles do not vote
        column_of[cv.groups] = np.arange(len(cv.groups))
        sims, idx = title_neighbours
        title_probs = neighbour_probs(sims[cv.rows], idx[cv.rows], column_of[codes], len(cv.groups))
    verdicts = judge(cv.columns, cv.probs, title_probs, CROSS_VALIDATION)
    verdicts.suggested = cv.groups[verdicts.suggested]
    return verdicts


def wrong_group_by_votes(rows: np.ndarray, codes: np.ndarray, photo_neighbours: tuple, title_neighbours: tuple | None
                         ) -> Verdicts:
    """Verdicts on `rows` (groups too small to cross-validate) from their nearest photos' and titles' votes."""
    photo = neighbour_votes(photo_neighbours[0][rows], photo_neighbours[1][rows], codes, codes[rows])
    title = (neighbour_votes(title_neighbours[0][rows], title_neighbours[1][rows], codes, codes[rows])
             if title_neighbours is not None else None)
    return judge_by_votes(photo, title, NEIGHBOURS)


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
    weights = _weights(sims)
    weights = weights / weights.sum(1, keepdims=True)
    voted = codes[idx]
    share = (weights * (voted == given[:, None])).sum(1)
    other = np.where(voted == given[:, None], -1, voted)
    best, best_share = np.full(len(idx), -1), np.zeros(len(idx))
    for column in range(idx.shape[1]):
        candidate = other[:, column]
        votes = (weights * (other == candidate[:, None])).sum(1)
        better = (candidate >= 0) & (votes > best_share)
        best[better], best_share[better] = candidate[better], votes[better]
    return share, best, best_share


def judge_labels(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged, label quality, suggested class): cleanlab's confident learning over probabilities that never saw
    their row's label; the suggestion is the likeliest other class."""
    quality = get_label_quality_scores(labels, probs)
    flagged = find_label_issues(labels, probs) if len(np.unique(labels)) > 1 else np.zeros(len(labels), bool)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1
    return flagged, quality, other.argmax(1)


def judge(labels: np.ndarray, photo: np.ndarray, title: np.ndarray | None, how: str) -> Verdicts:
    """Verdicts on cross-validated rows from the photo's probabilities and, if given, the title's.

    Either one disagreeing with the group flags a listing (a photo unlike its title is a finding too); the
    ranking's quality weighs both, so a listing both disagree with comes first.
    """
    flagged, quality, suggested = judge_labels(labels, photo)
    methods = np.full(len(labels), how, object)
    if title is None:
        return Verdicts(flagged, quality, suggested, methods)
    title_flagged, title_quality, _ = judge_labels(labels, title)
    methods[title_flagged & ~flagged] = f"{how} (title)"
    methods[title_flagged & flagged] = f"{how} + title"
    both = (1 - TITLE_WEIGHT) * photo + TITLE_WEIGHT * title
    both[np.arange(len(labels)), labels] = -1
    return Verdicts(flagged | title_flagged, (1 - TITLE_WEIGHT) * quality + TITLE_WEIGHT * title_quality,
                    both.argmax(1), methods)


def judge_by_votes(photo: tuple, title: tuple | None, how: str) -> Verdicts:
    """The same for rows judged by their neighbours' votes: flagged where another group outvotes the given one."""
    share, best, best_share = photo
    flagged = best_share > share
    methods = np.full(len(share), how, object)
    if title is None:
        return Verdicts(flagged, share, best, methods)
    title_share, title_best, title_best_share = title
    title_flagged = title_best_share > title_share
    methods[title_flagged & ~flagged] = f"{how} (title)"
    methods[title_flagged & flagged] = f"{how} + title"
    suggested = np.where((title_flagged & ~flagged) | (best < 0), title_best, best)
    return Verdicts(flagged | title_flagged, (1 - TITLE_WEIGHT) * share + TITLE_WEIGHT * title_share, suggested, methods)


def duplicates(table: pd.DataFrame, photo_neighbours: tuple, codes: np.ndarray, threshold: float) -> Twins:
    """Photos filed under different groups that are the same image file, share a perceptual hash, or whose
    embeddings are near-duplicates (cosine at least `threshold`); each pair once, by the first way found."""
    firsts, seconds, scores, methods = [], [], [], []
    for column, how in ((D.IMAGE, "same file"), (D.PHASH, "phash")):
        if column not in table:
            continue
        for rows in table.groupby(column).indices.values():
            if len(rows) > 1:
                first, second = (rows[side] for side in np.triu_indices(len(rows), 1))
                other_group = codes[first] != codes[second]
                firsts.append(first[other_group]), seconds.append(second[other_group])
                scores.append(np.ones(other_group.sum())), methods.append(np.full(other_group.sum(), how, object))
    sims, idx = photo_neighbours
    rows, ranks = np.nonzero(sims >= threshold)
    first, second = np.minimum(rows, idx[rows, ranks]), np.maximum(rows, idx[rows, ranks])
    other_group = codes[first] != codes[second]
    firsts.append(first[other_group]), seconds.append(second[other_group])
    scores.append(sims[rows, ranks][other_group].astype(np.float64))
    methods.append(np.full(other_group.sum(), "embedding", object))
    first, second = np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)
    once = np.sort(np.unique(first * len(codes) + second, return_index=True)[1])  # each pair's first finding, in order
    return Twins(first[once], second[once], np.concatenate(scores)[once], np.concatenate(methods)[once])


def merge_candidates(codes: np.ndarray, twins: Twins, cv: CrossValidated | None, title_neighbours: tuple | None,
                     limit: int) -> pd.DataFrame:
    """Pairs of groups that look like one product, strongest first, at most `limit` (0: all): (small, big, score,
    method), `small` the group with fewer photos.

    The evidence is the photos on each side that have a near-duplicate in the other group (the fewer of the
    two sides), or the photos the out-of-fold probabilities confuse between them, plus one where the groups'
    titles agree. A pair needs MERGE_MIN_EVIDENCE and MERGE_MIN_SHARE of the smaller group; the score, evidence
    over the smaller group's size plus MERGE_PRIOR, ranks 5 of 5 photos above 2 of 2.
    """
    sizes = np.bincount(codes)
    evidence = pd.concat([groups_confused(cv), groups_sharing_photos(twins, codes)])  # on a tie, the confusion is named
    evidence = evidence.sort_values("photos", ascending=False, kind="stable").drop_duplicates(["a", "b"])
    a, b = evidence["a"].to_numpy(), evidence["b"].to_numpy()
    smaller = np.minimum(sizes[a], sizes[b])
    titles = (pair_keys(a, b, len(sizes)).isin(groups_with_agreeing_titles(title_neighbours, codes, len(sizes)))
              if title_neighbours is not None else np.zeros(len(a), bool))
    support = np.minimum(evidence["photos"].to_numpy(), smaller) + titles
    strong = (support >= MERGE_MIN_EVIDENCE) & (support >= MERGE_MIN_SHARE * smaller)
    a_first = sizes[a] <= sizes[b]
    merges = pd.DataFrame({"small": np.where(a_first, a, b), "big": np.where(a_first, b, a),
                           "score": support / (smaller + MERGE_PRIOR),
                           "method": evidence["method"].to_numpy() + np.where(titles, " + title", "")})[strong]
    merges = merges.sort_values(["score", "small", "big"], ascending=[False, True, True], kind="stable")
    return merges.head(limit) if limit else merges


def groups_confused(cv: CrossValidated | None) -> pd.DataFrame:
    """(a, b, photos, method) for pairs of cross-validated groups a < b whose out-of-fold probabilities confuse
    photos between them: cleanlab's joint of given and true labels, both directions, as a count (its
    find_overlapping_classes, over the pairs that overlap alone rather than all K² of them)."""
    if cv is None:
        return _evidence([], [], [], "overlapping classes")
    joint = estimate_joint(labels=cv.columns, pred_probs=cv.probs)
    photos = np.rint((np.triu(joint, 1) + np.tril(joint, -1).T) * len(cv.columns)).astype(np.int64)
    a, b = np.nonzero(photos)
    return _evidence(cv.groups[a], cv.groups[b], photos[a, b], "overlapping classes")


def groups_sharing_photos(twins: Twins, codes: np.ndarray) -> pd.DataFrame:
    """(a, b, photos, method) for pairs of groups a < b that share near-duplicate photos, `photos` counting the
    distinct photos of whichever side has fewer: one photo that looks like a whole group counts once."""
    first_group, second_group = codes[twins.first], codes[twins.second]
    swap = first_group > second_group
    pairs = pd.DataFrame({"a": np.where(swap, second_group, first_group), "b": np.where(swap, first_group, second_group),
                          "a_photo": np.where(swap, twins.second, twins.first),
                          "b_photo": np.where(swap, twins.first, twins.second)})
    per_side = pairs.groupby(["a", "b"]).agg(a_photos=("a_photo", "nunique"), b_photos=("b_photo", "nunique")).reset_index()
    return _evidence(per_side["a"], per_side["b"], np.minimum(per_side["a_photos"], per_side["b_photos"]), "near-duplicates")


def groups_with_agreeing_titles(title_neighbours: tuple, codes: np.ndarray, n_groups: int) -> pd.Index:
    """pair_keys of the pairs of groups in which a listing's title has a neighbour of at least MERGE_TITLE_MIN in
    the other."""
    sims, idx = title_neighbours
    rows, ranks = np.nonzero(sims >= MERGE_TITLE_MIN)
    a, b = codes[rows], codes[idx[rows, ranks]]
    return pair_keys(a[a != b], b[a != b], n_groups).unique()


def pair_keys(a: np.ndarray, b: np.ndarray, n_groups: int) -> pd.Index:
    """One integer per unordered pair of group codes."""
    return pd.Index(np.minimum(a, b).astype(np.int64) * n_groups + np.maximum(a, b))


def _evidence(a, b, photos, method: str) -> pd.DataFrame:
    return pd.DataFrame({"a": np.asarray(a, np.int64), "b": np.asarray(b, np.int64),
                         "photos": np.asarray(photos, np.int64), "method": method})


def outliers(emb: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows below Tukey's far-out fence of typicality, every row's typicality): cleanlab's OutOfDistribution
    over the embeddings' `neighbours` nearest."""
    k = min(neighbours, len(emb) - 1)
    with sklearn.config_context(working_memory=OUTLIER_WORKING_MEMORY):
        typicality = OutOfDistribution(params={"k": k}).fit_score(features=emb, verbose=False)
    q1, q3 = np.percentile(typicality, [25, 75])
    return np.flatnonzero(typicality < q1 - OUTLIER_FENCE * (q3 - q1)), typicality


class Findings:
    """Rows of the findings table (COLUMNS), naming each group by its label and most common title."""

    def __init__(self, table: pd.DataFrame, codes: np.ndarray, groups: np.ndarray, titles: dict[str, str]):
        self.table, self.codes, self.groups, self.titles = table, codes, groups, titles

    def listings(self, rows: np.ndarray, kind: str, score, method, suggested, given: np.ndarray | None = None
                 ) -> pd.DataFrame:
        """One finding per table row in `rows`; `score`, `method` and `suggested` (a group code, -1: none) are one
        per finding or one for all, and `given` is each finding's group (default: its row's)."""
        rows = np.asarray(rows, np.int64)
        each = lambda value: np.broadcast_to(np.asarray(value), rows.shape)  # noqa: E731
        given_names = self.groups[self.codes[rows] if given is None else given].astype(str)
        suggested = each(suggested)
        suggested_names = np.where(suggested >= 0, self.groups[np.maximum(suggested, 0)].astype(str), "")
        return pd.DataFrame({
            D.ID: self.table[D.ID].to_numpy()[rows], D.IMAGE: self.table[D.IMAGE].to_numpy()[rows], KIND: kind,
            SCORE: each(score).astype(np.float64), METHOD: each(method), D.LABEL: given_names,
            D.TITLE: [self.titles.get(g, "") for g in given_names], SUGGESTED: suggested_names,
            SUGGESTED_TITLE: [self.titles.get(s, "") for s in suggested_names]}, columns=COLUMNS)

    def twins(self, twins: Twins, quality: np.ndarray) -> pd.DataFrame:
        """A finding per pair of twins: the likelier mislabel of the two, the other's group suggested."""
        first_likelier = quality[twins.first] <= quality[twins.second]
        listed = np.where(first_likelier, twins.first, twins.second)
        other = np.where(first_likelier, twins.second, twins.first)
        return self.listings(listed, DUPLICATE, twins.score, twins.method, self.codes[other])

    def merges(self, merges: pd.DataFrame) -> pd.DataFrame:
        """A finding per merge candidate, shown by the smaller group's first listing, the bigger group suggested."""
        first_row = np.unique(self.codes, return_index=True)[1]
        small = merges["small"].to_numpy(np.int64)
        return self.listings(first_row[small], SAME_PRODUCT, merges["score"].to_numpy(), merges["method"].to_numpy(),
                             merges["big"].to_numpy(np.int64), given=small).assign(**{D.ID: ""})

    @staticmethod
    def unreadable(skipped: pd.DataFrame) -> pd.DataFrame:
        """A finding per photo that did not decode, the reason in its title column."""
        return pd.DataFrame({D.ID: skipped[D.ID].to_numpy(), D.IMAGE: [Path(p).name for p in skipped[D.PATH]],
                             KIND: UNREADABLE, SCORE: 1.0, METHOD: "decode", D.LABEL: "",
                             D.TITLE: skipped["reason"].to_numpy(), SUGGESTED: "", SUGGESTED_TITLE: ""}, columns=COLUMNS)


def ranked(findings: list[pd.DataFrame]) -> pd.DataFrame:
    """The findings in KINDS order, then by score (ties keep the order found); a photo's best twin only."""
    findings = pd.concat([f for f in findings if len(f)] or [pd.DataFrame(columns=COLUMNS)], ignore_index=True)
    findings[SCORE] = findings[SCORE].astype(float).round(4)
    findings = findings.sort_values([KIND, SCORE], key=lambda c: c.map(KINDS.index) if c.name == KIND else -c,
                                    kind="stable")
    once = (findings[KIND] != DUPLICATE) | ~findings.duplicated([KIND, D.ID])
    return findings[once].reset_index(drop=True)
