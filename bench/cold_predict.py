"""What a user waits for from a fresh `predict` process: one photo per kind of model file and backend, and many photos.

1. One photo: `shopee-fastai --help`, and `predict` of one photo for each kind of model file and backend,
   each in a new process, best of `--repeat` after one warm-up run that fills the OS file cache and the ONNX
   cache; then the fastai path split into its parts (imports, unpickling, first forward).
2. Many photos (`--n`): `predict` as a user meets it, one fresh process per run with an empty cache (no
   prepared images, no cached ONNX graph), against a plain timm script that does the same: import torch and
   timm, build the network, decode each photo in turn (full decode, shorter side resized, centre crop),
   normalise, fp32 forward in batches, softmax, print the top 5. The row "no graph beside it" copies the
   `.pkl` alone, so its first run exports the graph (what a model trained elsewhere meets once), and its
   later runs take the cached graph (warm). Runs alternate between the cases; the median of `--repeat` is
   shown, with the ratio to the plain script.

    python bench/cold_predict.py            # trains a small model on the bundled sample first
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

from shopee_fastai.artifacts import ModelCard, ModelFiles
from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data.images import collect_images
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.machine import summary
from shopee_fastai.training import train

PARTS = r"""
import sys, time
t = time.perf_counter()
import torch
t1 = time.perf_counter()
import fastai.vision.all
t2 = time.perf_counter()
from shopee_fastai.inference.load import load_learner
from shopee_fastai.inference.torch_backends import predict_probs
learn = load_learner(sys.argv[1], cpu=True)
t3 = time.perf_counter()
predict_probs(learn, [sys.argv[2]], progress=False)
t4 = time.perf_counter()
predict_probs(learn, [sys.argv[2]], progress=False)
t5 = time.perf_counter()
print(f"{t1-t:.2f} {t2-t1:.2f} {t3-t2:.2f} {t4-t3:.2f} {t5-t4:.2f}")
"""

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


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ...: exit {out.returncode}\n{out.stderr[-1500:]}")
    return time.perf_counter() - start


def best_of(cmd: list[str], repeat: int) -> float:
    """Best of `repeat` runs after a warm-up (file cache, ONNX cache); `repeat` 0: the warm-up's own time."""
    warm = run(cmd)
    return min((run(cmd) for _ in range(repeat)), default=warm)


def one_photo(pkl: Path, image: Path, repeat: int, only: str | None, tmp: Path) -> None:
    """Part 1: `--help` and one photo, for each kind of model file and backend."""
    cli = [sys.executable, "-m", "shopee_fastai"]
    onnx = ModelFiles.beside(pkl).onnx  # the graph train wrote beside the model, else exported here
    if not onnx.is_file():
        onnx = tmp / "model.onnx"
        run([*cli, "export-onnx", "--model", str(pkl), "--out", str(onnx)])
    cases = [("shopee-fastai --help", [*cli, "--help"])]
    for label, model, backend in (("predict 1 photo, .pkl, --backend fastai", pkl, "fastai"),
                                  ("predict 1 photo, .pkl, --backend torch", pkl, "torch"),
                                  ("predict 1 photo, .safetensors, --backend torch", ModelFiles.beside(pkl).safetensors, "torch"),
                                  ("predict 1 photo, .pkl, auto (cached ONNX)", pkl, "auto"),
                                  ("predict 1 photo, .onnx", onnx, "auto")):
        cases.append((label, [*cli, "predict", str(image), "--model", str(model), "--backend", backend]))
    print("| cold process | seconds (best) |")
    print("|---|---|")
    for label, cmd in cases:
        if only is None or only in label:
            print(f"| {label} | {best_of(cmd, repeat):.2f} |", flush=True)
    if only is not None:
        return
    out = subprocess.run([sys.executable, "-c", PARTS, str(pkl), str(image)], capture_output=True, text=True, check=True)
    print("\n| fastai path, in one cold process | seconds |")
    print("|---|---|")
    for name, v in zip(("import torch", "import fastai.vision", "unpickle the learner", "first prediction", "second prediction"),
                       out.stdout.split()):
        print(f"| {name} | {float(v):.2f} |")


def many_photos(pkl: Path, files: list[str], repeat: int, tmp: Path) -> None:
    """Part 2: every photo in one fresh process per run, against the plain timm script."""
    card = ModelCard.read(pkl)
    cli = [sys.executable, "-m", "shopee_fastai", "predict", "--top-k", "5"]
    listing = tmp / "files.json"
    listing.write_text(json.dumps(files))
    alone = tmp / "alone" / pkl.name
    alone.parent.mkdir()
    shutil.copy(pkl, alone)
    shutil.copy(ModelFiles.beside(pkl).card, ModelFiles.beside(alone).card)
    cases = {
        "plain timm script (fp32, imports included)":
            [sys.executable, "-c", PLAIN, card.arch, str(len(card.classes)), str(card.input["size"]), str(listing)],
        "predict, .pkl, graphs beside it (as `train` leaves it)": [*cli, "--model", str(pkl), *files],
        "predict, .pkl, --int8": [*cli, "--model", str(pkl), "--int8", *files],
        "predict, .pkl, no graph beside it (first run exports one)": [*cli, "--model", str(alone), *files],
        "the same, a later run (graph cached)": [*cli, "--model", str(alone), *files],
    }
    warm = tmp / "warm-cache"  # the later run's cache: filled once before timing
    run(cases["the same, a later run (graph cached)"], {**os.environ, "SHOPEE_FASTAI_CACHE": str(warm)})
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeat):
        for label, cmd in cases.items():
            # every other case starts from an empty cache: nothing prepared, no graph cached
            cache = warm if "later run" in label else tmp / f"cache-{r}-{abs(hash(label))}"
            times[label].append(run(cmd, {**os.environ, "SHOPEE_FASTAI_CACHE": str(cache)}))
    base = statistics.median(times[next(iter(cases))])
    print(f"\n{len(files)} photos; model {pkl.name} ({card.arch}, {len(card.classes)} classes, {card.input['size']} px); "
          f"median of {repeat} fresh processes each\n")
    print("| whole process, cold | seconds | photos/s | × plain script |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        s = statistics.median(ts)
        print(f"| {label} | {s:.2f} | {len(files) / s:.0f} | {base / s:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a .pkl trained by `shopee-fastai train --int8` (default: train one on the bundled sample)")
    ap.add_argument("--arch", default=OFFLINE_ARCH, help="the sample model's architecture")
    ap.add_argument("--photos", type=Path, default=SAMPLE_DIR / "train_images")
    ap.add_argument("--n", type=int, default=500, help="photos of part 2 (0: one photo only)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="only the one-photo cases whose label contains this text (no fastai-path breakdown)")
    args = ap.parse_args()
    print(summary())

    files = [str(p) for p in collect_images([args.photos])]
    with tempfile.TemporaryDirectory() as tmp:
        pkl = args.model
        if pkl is None:
            card = train(TrainConfig(data=SAMPLE_DIR, arch=args.arch, pretrained=True, top_groups=0, split="random",
                                     models_dir=Path(tmp), int8=True, ensemble=1))  # one model: docs/speed.md's figures
            pkl = ModelFiles.of(Path(tmp), card.name).pkl
        one_photo(pkl, Path(files[0]), args.repeat, args.only, Path(tmp))
        if args.n:
            many_photos(pkl, files[: args.n], args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
