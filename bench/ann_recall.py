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
from shopee_fastai.matching import HNSW_EF_SEARCH, faiss_index
from shopee_fastai.machine import summary

K = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--latent", type=int, default=48)
    args = ap.parse_args()
    print(summary())
    emb = shopee_like(args.n, args.dim, latent=args.latent)
    q = emb[np.random.default_rng(1).choice(args.n, min(args.queries, args.n), replace=False)]
    scale = args.n / len(q)
    rows = []
    began = time.perf_counter()
    ix = faiss_index(emb, Index.exact)
    built = time.perf_counter() - began
    began = time.perf_counter()
    exact = ix.search(q, K)[1]
    rows.append(("exact", built, time.perf_counter() - began, 1.0))
    del ix
    began = time.perf_counter()
    ix = faiss_index(emb, Index.hnsw)
    built = time.perf_counter() - began
    for ef in sorted({HNSW_EF_SEARCH // 2, HNSW_EF_SEARCH, HNSW_EF_SEARCH * 2}):
        ix.hnsw.efSearch = ef
        began = time.perf_counter()
        approx = ix.search(q, K)[1]
        recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact)])
        rows.append((f"hnsw, efSearch {ef}{' (match)' if ef == HNSW_EF_SEARCH else ''}", built, time.perf_counter() - began, recall))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.n:,} x {args.dim} embeddings (latent {args.latent or 'none: isotropic'}), {len(q):,} sampled queries, "
          f"k={K}; peak memory {peak:.1f} GB")
    print(f"{'index':26s} {'build s':>8s} {'search s (sample)':>18s} {'all rows as queries, s':>23s} {'vs exact':>9s} {'recall@10':>10s}")
    base = rows[0][2] * scale + rows[0][1]
    for name, built, searched, recall in rows:
        total = searched * scale + built
        print(f"{name:26s} {built:8.1f} {searched:18.1f} {total:23.0f} {base / total:8.1f}x {recall:10.4f}")


if __name__ == "__main__":
    main()
