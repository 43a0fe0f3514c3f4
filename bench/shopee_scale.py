"""eda, prepare, the leak-free split and audit on a synthetic data set of Shopee's size, timed (audit's peak memory too).

Builds a Kaggle-layout folder shaped like Shopee's train set — 34,250 postings, 32,412 image files
(some files shared by several postings), 11,014 label groups mostly of 2, shared phashes and titles —
with small JPEGs (the row counts are what is tested; `cache_speed.py` covers large photos), then runs
`eda`, `prepare` twice (the second must do nothing), `split` and `audit`, printing each one's wall time
(and, where GNU time is installed, the audit's peak resident memory).

`--stand-in-embeddings` puts stand-ins for Lite0's features in the embedding cache, so that `split` and `audit`
skip their embedding pass (half an hour on 2 CPU cores) and time and measure what comes after it at full size.

    python bench/shopee_scale.py [--rows 34250] [--out /tmp/shopee-synthetic] [--stand-in-embeddings]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data import table as D
from shopee_fastai.inference.embed import embeddings_cache_path
from shopee_fastai.machine import summary

STEPS = ("eda", "prepare", "split", "audit")
STAND_IN_GROUP, STAND_IN_PHOTO = 0.0241, 0.0209  # squared norms beside a unit direction: cosine 0.98 in a group, 0.957 across
IMAGES_PER_ROW = 32412 / 34250
GROUPS_PER_ROW = 11014 / 34250


def build(out: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n_groups, n_images = int(rows * GROUPS_PER_ROW), int(rows * IMAGES_PER_ROW)
    sizes = np.minimum(50, 2 + rng.geometric(0.55, n_groups) - 1)
    labels = np.repeat(np.arange(n_groups), sizes)[:rows]
    labels = np.concatenate([labels, rng.integers(0, n_groups, rows - len(labels))])
    image_of_row = np.concatenate([np.arange(n_images), rng.integers(0, n_images, rows - n_images)])
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 255, (n_groups, 3))
    for i in range(n_images):
        path = out / "train_images" / f"{i:08x}.jpg"
        if not path.exists():
            g = labels[np.flatnonzero(image_of_row == i)[0]] if i < rows else 0
            w, h = rng.integers(100, 320, 2)
            px = np.clip(colours[g] + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(path, quality=80)
    phash = [f"{(int(labels[r]) * 7919 + (r % 3 == 0) * r) % 2**63:016x}" for r in range(rows)]
    pd.DataFrame({"posting_id": [f"train_{r}" for r in range(rows)], "image": [f"{i:08x}.jpg" for i in image_of_row],
                  "image_phash": phash, "title": [f"product {g % 9000}" for g in labels],
                  "label_group": labels}).to_csv(out / "train.csv", index=False)
    return out


def stand_in_embeddings(data: Path, seed: int = 0) -> Path:
    """Cache stand-ins for Lite0's features of every photo, under the key `embeddings_for` reads them by.

    Each is a unit vector: one direction shared by all, plus its group's random direction, plus its own. Their
    cosines are about 0.98 within a group and 0.957 across groups, so nearly every photo's 10 nearest are
    near-duplicates at the audit's 0.95. Lite0 sees these noisy flat colours as much alike: on its features
    the audit found 31,222 cross-group duplicates among 34,250 postings.
    """
    table = D.read_table(data)
    files = list(dict.fromkeys(table[D.PATH]))  # the audit's and split's order; every file of this set decodes
    groups = table.drop_duplicates(D.PATH)[D.LABEL].astype(int).to_numpy()
    rng, dim = np.random.default_rng(seed), 1280
    emb = rng.normal(0, 1 / np.sqrt(dim), (len(files), dim)).astype(np.float32) * np.sqrt(STAND_IN_PHOTO)
    emb += rng.normal(0, 1 / np.sqrt(dim), (groups.max() + 1, dim)).astype(np.float32)[groups] * np.sqrt(STAND_IN_GROUP)
    emb += rng.normal(0, 1, dim).astype(np.float32) / np.sqrt(dim)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dest = embeddings_cache_path(files, OFFLINE_ARCH)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.save(dest, emb)
    return dest


def timed(*args: str, peak: bool = False) -> None:
    start = time.perf_counter()
    gnu_time = ["/usr/bin/time", "-f", "peak %M KiB"] if peak and Path("/usr/bin/time").is_file() else []
    out = subprocess.run([*gnu_time, sys.executable, "-m", "shopee_fastai", *args], capture_output=True, text=True)
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.strip()]
    last = lines[-3:-2] if args[0] == "audit" else lines[-1:]
    memory = [ln for ln in out.stderr.splitlines() if ln.startswith("peak ")]
    last = last or [out.stderr.strip()[-300:]]
    print(f"{' '.join(args[:1]):8s} {time.perf_counter() - start:8.1f} s   rc {out.returncode}   {last[0][-160:]}"
          + (f"   {memory[-1]}" if memory else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=34250)
    ap.add_argument("--out", type=Path, default=Path("/tmp/shopee-synthetic"))
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="the commands to time (default: all)")
    ap.add_argument("--stand-in-embeddings", action="store_true",
                    help="cache stand-ins for Lite0's features: split and audit skip embedding and run the rest at full size")
    args = ap.parse_args()
    print(summary())
    start = time.perf_counter()
    data = build(args.out, args.rows)
    print(f"built {data} ({args.rows:,} rows) in {time.perf_counter() - start:.0f} s")
    if args.stand_in_embeddings:
        print(f"stand-in embeddings cached in {stand_in_embeddings(data)}")
    if "eda" in args.steps:
        timed("eda", "--data", str(data), "--out", str(args.out / "eda"))
    if "prepare" in args.steps:
        timed("prepare", "--data", str(data), "--size", "224")
        timed("prepare", "--data", str(data), "--size", "224")
    if "split" in args.steps:
        timed("split", "--data", str(data), "--top-groups", "0")
    if "audit" in args.steps:
        timed("audit", "--data", str(data), "--out", str(args.out.with_name(args.out.name + "-audit")), peak=True)


if __name__ == "__main__":
    main()
