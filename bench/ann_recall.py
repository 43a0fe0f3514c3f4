"""Approximate neighbour search at catalogue scale: recall@10 of `match --index hnsw` against exact search.

Synthetic unit vectors in Shopee-shaped groups (mostly 2, a tail to 50; `match_speed.shopee_like`) lying
in a 48-dimensional subspace plus noise, as image embeddings do (`--latent 0`: isotropic in every
dimension, the hardest case for any index), the index `shopee_fastai.matching.knn` builds for
`--index hnsw`; exact search (faiss flat inner product) on a sample of queries is the reference. Both searches run on the same sample; the seconds for every row as a
query are scaled from it.

    python bench/ann_recall.py [--n 1000000] [--dim 512] [--queries 10000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from match_speed import shopee_like
from shopee_fastai.config import Index
from shopee_fastai.matching import _faiss_index

K = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--latent", type=int, default=48)
    args = ap.parse_args()
    emb = shopee_like(args.n, args.dim, latent=args.latent)
    q = emb[np.random.default_rng(1).choice(args.n, min(args.queries, args.n), replace=False)]
    scale = args.n / len(q)
    times = {}
    for kind in (Index.exact, Index.hnsw):
        began = time.perf_counter()
        ix = _faiss_index(emb, kind)
        built = time.perf_counter() - began
        began = time.perf_counter()
        sims, idx = ix.search(q, K)
        times[kind] = (built, time.perf_counter() - began, idx)
        del ix
    exact, approx = times[Index.exact][2], times[Index.hnsw][2]
    recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.n:,} x {args.dim} embeddings (latent {args.latent or 'none: isotropic'}), {len(q):,} sampled queries, "
          f"k={K}; peak memory {peak:.1f} GB")
    print(f"{'index':6s} {'build s':>8s} {'search s (sample)':>18s} {'all rows as queries, s':>23s} {'recall@10':>10s}")
    for kind, (built, searched, _) in times.items():
        print(f"{kind.value:6s} {built:8.1f} {searched:18.1f} {searched * scale + built:23.0f} "
              f"{1.0 if kind == Index.exact else recall:10.4f}")
    e, h = times[Index.exact], times[Index.hnsw]
    print(f"hnsw vs exact, every row as a query: {(e[1] * scale + e[0]) / (h[1] * scale + h[0]):.1f}x faster")


if __name__ == "__main__":
    main()
