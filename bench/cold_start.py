"""Cold start: `--help`, and `predict` of one photo from a fresh process, for each kind of model file and backend.

Each case runs in a new Python process (best of `--repeat`, after one warm-up run that fills the OS
file cache and the ONNX cache); a second table splits the fastai path into its parts (imports,
unpickling, first forward) to show what dominates.

    python bench/cold_start.py            # trains a small model on the bundled sample first
    python bench/cold_start.py --model models/x.pkl
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shopee_fastai.artifacts import ModelFiles
from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.machine import summary

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


def seconds(cmd: list[str], repeat: int) -> float:
    """Best of `repeat` runs after a warm-up (file cache, ONNX cache); `repeat` 0: the warm-up's own time."""
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    best = time.perf_counter() - start if repeat == 0 else float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="an exported .pkl (default: train one on the bundled sample)")
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="only the cases whose label contains this text (and no fastai-path breakdown)")
    args = ap.parse_args()
    print(summary())

    image = sorted((SAMPLE_DIR / "train_images").glob("*.jpg"))[0]
    cli = [sys.executable, "-m", "shopee_fastai"]
    with tempfile.TemporaryDirectory() as tmp:
        pkl = args.model
        if pkl is None:
            from shopee_fastai.config import TrainConfig
            from shopee_fastai.training import train

            card = train(TrainConfig(data=SAMPLE_DIR, arch=args.arch, pretrained=True, top_groups=0, split="random",
                                     models_dir=Path(tmp)))
            pkl = ModelFiles.of(Path(tmp), card.name).pkl
        onnx = ModelFiles.beside(pkl).onnx  # the graph train wrote beside the model, else exported here
        if not onnx.is_file():
            onnx = Path(tmp) / "model.onnx"
            subprocess.run([*cli, "export-onnx", "--model", str(pkl), "--out", str(onnx)], capture_output=True, check=True)
        cases = [("shopee-fastai --help", [*cli, "--help"])]
        for label, model, backend in (("predict 1 photo, .pkl, --backend fastai", pkl, "fastai"),
                                      ("predict 1 photo, .pkl, --backend torch", pkl, "torch"),
                                      ("predict 1 photo, .safetensors, --backend torch", ModelFiles.beside(pkl).safetensors, "torch"),
                                      ("predict 1 photo, .pkl, auto (cached ONNX)", pkl, "auto"),
                                      ("predict 1 photo, .onnx", onnx, "auto")):
            cases.append((label, [*cli, "predict", str(image), "--model", str(model), "--backend", backend]))
        cases = [c for c in cases if args.only is None or args.only in c[0]]
        print("| cold process | seconds (best) |")
        print("|---|---|")
        for label, cmd in cases:
            s = seconds(cmd, args.repeat)
            print(f"| {label} | {s:.2f} |", flush=True)
        if args.only is not None:
            return
        out = subprocess.run([sys.executable, "-c", PARTS, str(pkl), str(image)], capture_output=True, text=True, check=True)
        parts = [float(v) for v in out.stdout.split()]
        print("\n| fastai path, in one cold process | seconds |")
        print("|---|---|")
        for name, v in zip(("import torch", "import fastai.vision", "unpickle the learner", "first prediction", "second prediction"), parts):
            print(f"| {name} | {v:.2f} |")


if __name__ == "__main__":
    main()
