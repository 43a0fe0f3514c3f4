"""Matching at Shopee's size: 34,250 synthetic 1,280-d embeddings, wall time and peak memory per method.

Each method runs in its own process (peak RSS is that process's own), in one invocation, side by side:
- baseline: brute-force NumPy — the full n x n similarity matrix, then argpartition over each row;
- chunked: `shopee_fastai.matching.knn` with the NumPy backend (1,024 query rows at a time);
- faiss: `knn` with faiss-cpu's exact inner-product index (if installed).
All three then apply the same threshold; the script checks they return the same matches.
Then `shopee-fastai match --embeddings` runs end to end as a user meets it (a whole process: CSV in,
submission out) on `--match-dim` embeddings, plain, with blending and min-2, and on the HNSW index.

    python bench/match_speed.py [--n 34250] [--dim 1280] [--match-dim 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from shopee_fastai.machine import summary

K, THRESHOLD = 50, 0.6
METHODS = ("baseline", "chunked", "faiss")


def shopee_labels(n: int, rng) -> np.ndarray:
    """Group ids in Shopee's shape (mostly 2 postings, a tail up to 50)."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(min(50, 2 + rng.geometric(0.45) - 1)))
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def shopee_like(n: int, dim: int, seed: int = 0, latent: int = 0) -> np.ndarray:
    """Unit vectors in groups of Shopee's shape. `latent` > 0: the groups lie in a `latent`-dimensional subspace
    (image embeddings have a low intrinsic dimension), else isotropic in all `dim` (the hardest case to index)."""
    rng = np.random.default_rng(seed)
    labels = shopee_labels(n, rng)
    if latent:
        proj = rng.normal(size=(latent, dim)).astype(np.float32)
        z = rng.normal(size=(labels.max() + 1, latent)).astype(np.float32)[labels] + 0.5 * rng.normal(size=(n, latent)).astype(np.float32)
        emb = z @ proj + 0.3 * np.sqrt(latent) * rng.normal(size=(n, dim)).astype(np.float32)
    else:
        emb = rng.normal(size=(labels.max() + 1, dim)).astype(np.float32)[labels] + 0.9 * rng.normal(size=(n, dim)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def run_one(method: str, n: int, dim: int) -> dict:
    from shopee_fastai.matching import knn, neighbours

    emb = shopee_like(n, dim)
    start = time.perf_counter()
    if method == "baseline":
        # `emb @ emb.T` goes to OpenBLAS's syrk, which segfaults at this size here (numpy 2.4, OpenBLAS 0.3.31);
        # a plain gemm with a transposed copy is the working brute force.
        sim = emb @ np.ascontiguousarray(emb.T)
        idx = np.argpartition(-sim, K - 1, axis=1)[:, :K]
        sims = np.take_along_axis(sim, idx, 1)
    else:
        sims, idx = knn(emb, K, backend="numpy" if method == "chunked" else "faiss")
    found = neighbours(sims, idx, THRESHOLD)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hash(tuple(frozenset(m) for m in found))
    return {"method": method, "seconds": seconds, "peak_mb": round(peak_mb), "digest": digest,
            "pairs": int(sum(len(m) for m in found))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=34250)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--match-dim", type=int, default=512)
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.dim)))
        return
    print(summary())
    emb_mb = args.n * args.dim * 4 / 2**20
    print(f"{args.n:,} embeddings x {args.dim} dims ({emb_mb:.0f} MB), k={K}, threshold {THRESHOLD}")
    print(f"{'method':10s} {'seconds':>8s} {'peak MB':>8s} {'vs baseline':>12s}  same matches")
    rows = []
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--one", method, "--n", str(args.n), "--dim", str(args.dim)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{method:10s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r, base = rows[-1], rows[0]
        print(f"{method:10s} {r['seconds']:8.1f} {r['peak_mb']:8,d} {base['seconds'] / max(r['seconds'], 1e-9):10.2f}x"
              f"   {r['digest'] == base['digest']} ({r['pairs']:,} pairs)")
    end_to_end(args.n, args.match_dim)


def end_to_end(n: int, dim: int) -> None:
    """`shopee-fastai match --embeddings` as whole processes, on a Shopee-shaped table."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="match-e2e-") as folder:
        work = Path(folder)
        (work / "train_images").mkdir()
        labels = shopee_labels(n, np.random.default_rng(0))
        pd.DataFrame({"posting_id": [f"p{i}" for i in range(n)], "image": [f"{i}.jpg" for i in range(n)],
                      "image_phash": [f"{i:016x}" for i in range(n)], "title": "t", "label_group": labels}
                     ).to_csv(work / "train.csv", index=False)
        np.save(work / "e.npy", shopee_like(n, dim, latent=48))
        print(f"\n`shopee-fastai match --embeddings` end to end, {n:,} postings x {dim} dims (whole process, imports included)")
        for extra in ([], ["--blend", "--min2"], ["--index", "hnsw"]):
            cmd = [sys.executable, "-m", "shopee_fastai", "match", "--data", str(work), "--embeddings", str(work / "e.npy"),
                   "--threshold", "0.5", "--out", str(work / "s.csv"), *extra]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            f1 = [ln for ln in out.stdout.splitlines() if "F1" in ln]
            print(f"{' '.join(extra) or 'plain':18s} {time.perf_counter() - start:6.1f} s  rc {out.returncode}  {f1[-1] if f1 else out.stderr[-200:]}")


if __name__ == "__main__":
    main()
