"""Matching F1 on product groups a model never saw, in Shopee's shape, by embedding source.

Takes the label groups outside the N largest (the groups `train --top-groups N` never trains on),
subsamples each to a Shopee-like size (mostly 2 postings, a tail up to 50, capped by what the group
has), and scores image-only matching with the competition's mean per-row F1: the threshold is tuned on
half of the groups and F1 reported on the other half, over several seeds.

    python bench/matching_grocery.py --data ../shared/data/grocery-store --model models/<lite0 trained on top-21>.pkl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.table import LABEL, PATH, clean, read_table
from shopee_fastai.matching import tune

SHOPEE_SIZES = (2, 2, 2, 2, 2, 2, 3, 3, 4, 5, 6, 8, 12, 20, 35, 50)  # draws: mostly pairs, a long tail


def shopee_shaped(table, seed: int):
    rng = np.random.default_rng(seed)
    parts = []
    for _, g in table.groupby(LABEL):
        n = min(len(g), int(rng.choice(SHOPEE_SIZES)))
        parts.append(g.iloc[rng.permutation(len(g))[:n]])
    import pandas as pd

    return pd.concat(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", default=[], help="trained learner(s) whose body to embed with")
    ap.add_argument("--trained-groups", type=int, default=21, help="the N largest groups the models trained on")
    ap.add_argument("--arch", default=OFFLINE_ARCH, help="pretrained backbone to compare")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    full = read_table(args.data)
    seen = set(clean(full, args.trained_groups)[LABEL])
    unseen = full[~full[LABEL].isin(seen)].reset_index(drop=True)
    print(f"{unseen[LABEL].nunique()} unseen groups, {len(unseen)} photos")

    from shopee_fastai.artifacts import load_learner
    from shopee_fastai.inference.embed import embeddings_for, learner_embed

    sources = {f"pretrained {args.arch} backbone": embeddings_for(list(unseen[PATH]), args.arch)}
    for m in args.model:
        sources[f"fine-tuned body of {m.stem}"] = learner_embed(load_learner(m), list(unseen[PATH]))
    print(f"{'embedding source':48s} {'min-2':5s}  {'threshold':>9s}  {'held-out F1 (mean ± sd)':>24s}  precision  recall  postings")
    for name, emb in sources.items():
        for min2 in (False, True):
            f1, p, r, t, n = [], [], [], [], []
            for seed in range(args.seeds):
                rows = shopee_shaped(unseen, seed)
                best, _, held = tune(emb[rows.index.to_numpy()], rows[LABEL].tolist(), seed=seed, min2=min2)
                f1.append(held.f1), p.append(held.precision), r.append(held.recall), t.append(best), n.append(len(rows))
            print(f"{name:48s} {'yes' if min2 else 'no':5s}  {np.mean(t):9.3f}  {np.mean(f1):15.3f} ± {np.std(f1):.3f}"
                  f"  {np.mean(p):9.3f}  {np.mean(r):6.3f}  {np.mean(n):8.0f}")


if __name__ == "__main__":
    main()
