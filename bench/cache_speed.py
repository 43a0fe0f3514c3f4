"""One DataLoader epoch over raw images vs the prepared cache, side by side in one run.

Times what feeds the model — decode, Resize, batch augmentation, normalisation — with no model, over
the training DataLoader that `train` builds, once from the original files and once from `prepare`'s
cache. Data sets: a Kaggle-layout folder (grocery-store: 348 px photos) and synthetic large JPEGs
(1,000-2,000 px, like Shopee's). Prints seconds per epoch, images/s and the ratio.

    python bench/cache_speed.py --data ../shared/data/grocery-store [--synthetic 300] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from shopee_fastai.machine import summary


def synthetic_shopee(root: Path, n: int, seed: int = 0) -> Path:
    """Kaggle-layout folder of `n` large JPEGs with photo-like content (smooth shapes plus grain)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = rng.integers(1000, 2001, size=2)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([np.sin(xx / rng.uniform(40, 200) + c) * np.cos(yy / rng.uniform(40, 200)) for c in range(3)], -1)
        img = np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{i:05d}.jpg"
        Image.fromarray(img).save(root / "train_images" / name, quality=90)
        rows.append({"posting_id": f"s{i}", "image": name, "image_phash": f"{i:016x}", "title": "x",
                     "label_group": str(i % 10)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def epoch_seconds(table, size: int, bs: int, workers: int | None) -> float:
    from shopee_fastai.config import Aug
    from shopee_fastai.data.loaders import LoaderConfig, make_dataloaders
    from shopee_fastai.data.split import SPLIT, TRAIN, VALID
    from shopee_fastai.nets.body import IMAGENET_STATS

    frame = table.assign(**{SPLIT: TRAIN})
    frame.loc[frame.index[:bs], SPLIT] = VALID
    dls = make_dataloaders(frame, IMAGENET_STATS, LoaderConfig(size=size, bs=bs, aug=Aug.fastai, workers=workers))
    start = time.perf_counter()
    n = sum(len(x) for x, _ in dls.train)
    return (time.perf_counter() - start), n


def bench(name: str, data: Path, size: int, bs: int, workers: int | None) -> None:
    from shopee_fastai.data.cache import prepare, use_cache
    from shopee_fastai.data.table import PATH, read_table

    table = read_table(data)
    start = time.perf_counter()
    prepare(list(table[PATH]), size, progress=False)
    prep = time.perf_counter() - start
    cached = table.assign(**{PATH: use_cache(table[PATH], size)[0]})
    raw_s, n = epoch_seconds(table, size, bs, workers)
    cache_s, _ = epoch_seconds(cached, size, bs, workers)
    print(f"{name:28s} {len(table):6d}  {raw_s:8.1f} s ({n / raw_s:6.1f} img/s)  {cache_s:8.1f} s ({n / cache_s:6.1f} img/s)"
          f"  {raw_s / cache_s:5.2f}x   {prep:6.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, action="append", default=[], help="Kaggle-layout folder (repeatable)")
    ap.add_argument("--synthetic", type=int, default=300, help="how many large synthetic JPEGs (0: none)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fastai's)")
    args = ap.parse_args()
    print(summary())
    from shopee_fastai.config import CACHE_ENV

    with tempfile.TemporaryDirectory(prefix="shopee-bench-") as folder:
        tmp = Path(folder)
        os.environ[CACHE_ENV] = str(tmp / "cache")  # a cold cache of its own
        print(f"one training epoch (decode + Resize({args.size}) + aug_transforms + Normalize, bs {args.bs}), "
              f"{os.cpu_count()} cores")
        print(f"{'data':28s} {'images':>6s}  {'raw files':>24s}  {'prepared cache':>24s}  ratio   prepare once")
        for d in args.data:
            bench(d.name, d, args.size, args.bs, args.workers)
        if args.synthetic:
            bench("synthetic 1000-2000 px", synthetic_shopee(tmp / "synthetic", args.synthetic), args.size, args.bs,
                  args.workers)


if __name__ == "__main__":
    main()
