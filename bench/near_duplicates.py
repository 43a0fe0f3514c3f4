"""How much a random split of sequence-shot photos overstates accuracy, and how much the leak-free split fixes.

On a data set whose posting_ids mark photos from another occasion (grocery-store: `val_`), this prints
1. cosine-similarity quantiles of pretrained embeddings: each photo's nearest same-group neighbour among
   the other `train_` photos (same shooting session) and each `val_` photo's nearest `train_` neighbour
   (another occasion) — the threshold must separate these;
2. for several thresholds: clusters, and test images a plain random split leaks;
3. a linear probe (logistic regression on frozen features) scored on a random split of the `train_`
   photos, on the leak-free split of them, and on the `val_` photos (the truth);
4. for each cluster linkage at the default threshold: clusters, largest, the probe on its leak-free split,
   and how many `train_` photos training keeps under `--holdout` (the held-out photos' direct twins left
   out, as `split` does) against sweeping each held-out photo's whole cluster into the test.

    python bench/near_duplicates.py --data ../shared/data/grocery-store [--top-groups 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from shopee_fastai.config import DUP_LINKAGE, DUP_THRESHOLD, OFFLINE_ARCH, Linkage
from shopee_fastai.data.neardup import clusters, leak_free_split, leaked
from shopee_fastai.data.split import TEST, TRAIN, TWIN, make_split
from shopee_fastai.data.table import ID, LABEL, PATH, clean, read_table
from shopee_fastai.inference.embed import embeddings_for
from shopee_fastai.machine import summary

THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def nearest_same_group(emb: np.ndarray, labels: np.ndarray, queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    sim = emb[queries] @ emb[pool].T
    sim[labels[queries][:, None] != labels[pool][None, :]] = -1
    sim[queries[:, None] == pool[None, :]] = -1
    return sim.max(1)


def probe(emb: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=1.0).fit(emb[train], y[train])
    return float((clf.predict(emb[test]) == y[test]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--top-groups", type=int, default=0)
    ap.add_argument("--other-occasion", default="^val_", help="regex of posting_ids shot on another occasion")
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(summary())

    df = clean(read_table(args.data), args.top_groups)
    start = time.perf_counter()
    emb = embeddings_for(list(df[PATH]), args.arch)
    print(f"{len(df)} images, {df[LABEL].nunique()} groups; embeddings {emb.shape} in {time.perf_counter() - start:.0f} s")
    y = df[LABEL].to_numpy()
    other = df[ID].str.contains(args.other_occasion).to_numpy()
    same_session, next_occasion = np.flatnonzero(~other), np.flatnonzero(other)
    within = nearest_same_group(emb, y, same_session, same_session)
    across = nearest_same_group(emb, y, next_occasion, same_session)
    print("nearest same-group neighbour, cosine quantiles", QUANTILES)
    print("  same session   ", np.round(np.quantile(within, QUANTILES), 3))
    print("  other occasion ", np.round(np.quantile(across, QUANTILES), 3))

    session = df[~other].reset_index(drop=True)
    s_emb, s_y = emb[~other], y[~other]
    truth = probe(emb, y, same_session, next_occasion)
    print(f"\nlinear probe on frozen {args.arch} features trained on same-session photos; "
          f"other-occasion photos (the truth): {truth:.3f}")
    print(f"split (threshold)  clusters  largest  groups in test  random-split test leaks  probe test accuracy (mean ± sd, {args.seeds} seeds)  overstates by")
    for t in (None, *THRESHOLDS):
        row(session, s_emb, s_y, truth, args.seeds, t, DUP_LINKAGE, "random" if t is None else
            f"leak-free ({t:.2f}{'*' if t == DUP_THRESHOLD else ''})")

    print(f"\nlinkage at {DUP_THRESHOLD} (* the default); then, with --holdout {args.other_occasion!r} on all {len(df)} photos:"
          " same-session photos training keeps, direct twins left out / if whole clusters went to test")
    for linkage in Linkage:
        row(session, s_emb, s_y, truth, args.seeds, DUP_THRESHOLD, linkage,
            f"{linkage}{'*' if linkage == DUP_LINKAGE else ''}", end="")
        found = leak_free_split(df, emb, DUP_THRESHOLD, 0, args.other_occasion, linkage)
        kept = int(np.isin(found.split.reindex(df[ID]).to_numpy(), (TRAIN, "valid"))[~other].sum())
        cl = found.clusters
        swept = int(np.isin(cl[~other], cl[other]).sum())
        print(f"  keeps {kept}/{(~other).sum()} (twins {int((found.split == TWIN).sum())}) / {(~other).sum() - swept}")


def row(session, s_emb, s_y, truth, seeds, t, linkage, name, end="\n") -> None:
    """Clusters, largest, groups in test, random-split leaks and the probe on this split, in one line."""
    ids = None if t is None else clusters(session, s_emb, t, linkage)
    accs, present = [], []
    for seed in range(seeds):
        split = make_split(session, seed, clusters=ids).reindex(session[ID]).to_numpy()
        test = np.flatnonzero(split == TEST)
        accs.append(probe(s_emb, s_y, np.flatnonzero(split == TRAIN), test))
        present.append(len(set(s_y[test])))
    sizes = np.bincount(ids) if ids is not None else np.ones(len(session), int)
    leaks = leaked(make_split(session, 0), session, ids) if ids is not None else "-"
    print(f"  {name:17s} {len(sizes):6d}  {sizes.max():6d}  {np.mean(present):8.1f}  {leaks!s:>12}"
          f"            {np.mean(accs):.3f} ± {np.std(accs):.3f}                  {100 * (np.mean(accs) - truth):+5.1f} points", end=end)


if __name__ == "__main__":
    main()
