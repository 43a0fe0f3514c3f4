"""`predict` over many photos as a user meets it: one fresh process per run, imports included, against a plain
timm script that does the same.

The plain script is what one writes first: import torch and timm, build the network, decode each photo in
turn (full decode, shorter side resized, centre crop), normalise, fp32 forward in batches, softmax, print
the top 5. `predict` runs on a freshly trained model: the graphs `train` wrote beside it, an empty
cache (no prepared images, no cached ONNX graph). The row "no graph beside it" copies the `.pkl` alone,
so its first run exports the graph (what a model trained elsewhere meets once), and its later runs take
the cached graph (warm). Runs alternate between the cases; the median of `--repeat` is shown, with the
ratio to the plain script.

    python bench/cold_predict.py --model models/x.pkl --photos ../shared/data/grocery-store/train_images --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from shopee_fastai.machine import summary

PLAIN = r"""
import sys, json
import numpy as np, torch, timm
from PIL import Image
arch, n, size, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 32
files = json.loads(open(sys.argv[4]).read())
model = timm.create_model(arch, num_classes=n, pretrained=False).eval()
mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)

def load(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255

with torch.no_grad():
    for b in range(0, len(files), bs):
        x = torch.from_numpy(np.stack([load(f) for f in files[b:b + bs]])).permute(0, 3, 1, 2)
        probs = model((x - mean) / std).softmax(1)
        top = probs.topk(5)
        for f, p, i in zip(files[b:b + bs], top.values.tolist(), top.indices.tolist()):
            print(f, *(f"{c} {q:.3f}" for c, q in zip(i, p)), sep="\t")
"""


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ...: exit {out.returncode}\n{out.stderr[-1500:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a .pkl trained by `shopee-fastai train --int8` (both graphs beside it)")
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(summary())

    from shopee_fastai.artifacts import ModelCard, ModelFiles
    from shopee_fastai.data.images import collect_images

    card = ModelCard.read(args.model)
    files = [str(p) for p in collect_images([args.photos])[: args.n]]
    cli = [sys.executable, "-m", "shopee_fastai", "predict", "--top-k", "5"]
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.json"
        listing.write_text(json.dumps(files))
        alone = Path(tmp) / "alone" / args.model.name
        alone.parent.mkdir()
        shutil.copy(args.model, alone)
        shutil.copy(ModelFiles.beside(args.model).card, ModelFiles.beside(alone).card)
        cases = {
            "plain timm script (fp32, imports included)":
                [sys.executable, "-c", PLAIN, card.arch, str(len(card.classes)), str(card.input["size"]), str(listing)],
            "predict, .pkl, graphs beside it (as `train` leaves it)": [*cli, "--model", str(args.model), *files],
            "predict, .pkl, --precision int8": [*cli, "--model", str(args.model), "--precision", "int8", *files],
            "predict, .pkl, no graph beside it (first run exports one)": [*cli, "--model", str(alone), *files],
            "the same, a later run (graph cached)": [*cli, "--model", str(alone), *files],
        }
        warm = Path(tmp) / "warm-cache"  # the later run's cache: filled once before timing
        run(cases["the same, a later run (graph cached)"], {**os.environ, "SHOPEE_FASTAI_CACHE": str(warm)})
        times: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(args.repeat):
            for label, cmd in cases.items():
                # every other case starts from an empty cache: nothing prepared, no graph cached
                cache = warm if "later run" in label else Path(tmp) / f"cache-{r}-{abs(hash(label))}"
                times[label].append(run(cmd, {**os.environ, "SHOPEE_FASTAI_CACHE": str(cache)}))
        base = statistics.median(times[next(iter(cases))])
        print(f"{len(files)} photos from {args.photos}; model {args.model.name} ({card.arch}, {len(card.classes)} classes, "
              f"{card.input['size']} px); {os.cpu_count()} cores; median of {args.repeat} fresh processes each\n")
        print("| whole process, cold | seconds | photos/s | × plain script |")
        print("|---|---|---|---|")
        for label, ts in times.items():
            s = statistics.median(ts)
            print(f"| {label} | {s:.2f} | {len(files) / s:.0f} | {base / s:.2f} |")


if __name__ == "__main__":
    main()
