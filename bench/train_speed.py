"""Where `train`'s time goes on this CPU: the cache and the epochs of each recipe, per `--precision`, against the matmul peak.

1. `train` itself, in this process (`shopee_fastai.training.fit_learner`), for each recipe and precision:
   the default recipe (the frozen part's outputs cached once, then the top stages and the head trained over
   the cached views) and the full network from random weights (`--epochs` with augmentation off: the loop
   of `--recipe fine-tune`'s unfrozen phase). Each epoch's seconds are the model card's (validation
   included); the cache's are its phase's time less its epochs. Images/s are set against this machine's fp32
   matmul peak (bench/yardstick.py), a training step costing about three forward passes of what trains.
2. The frozen part of the default recipe's model over one batch, as the cache runs it: eager PyTorch
   channels-last against ONNX Runtime, with their largest difference.

    python bench/train_speed.py --data ../shared/data/grocery-store --top-groups 21 --size 224
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from shopee_fastai.config import OFFLINE_ARCH, Aug, Split, TrainConfig
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.device import cpu_has_bf16
from shopee_fastai.inference.export import onnx_module
from shopee_fastai.machine import summary
from shopee_fastai.nets.body import split_model
from shopee_fastai.training import fit_learner
from shopee_fastai.training.features import HEAD_BS

from yardstick import forward_gflops, fraction, peak_gflops  # bench/yardstick.py, beside this script

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery-store"
TRAIN_STEP_FORWARDS = 3  # forward + backward ≈ 3 forwards
RECIPES = {  # name: TrainConfig settings, and the field that takes --epochs
    "default recipe": ({"pretrained": True}, "head_epochs"),
    "full network": ({"pretrained": False, "aug": Aug.none}, "epochs"),
}


def per_image_ms(fn, bs: int, repeat: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat / bs * 1000


def timed_run(args, recipe: str, precision: str, models: Path) -> dict:
    """One `train` run: seconds of its fastest epoch and of its cache, images per epoch, GFLOP per trained image."""
    settings, epochs_field = RECIPES[recipe]
    cfg = TrainConfig(data=args.data, arch=args.arch, top_groups=args.top_groups, split=Split.random, size=args.size,
                      bs=args.bs, workers=args.workers, precision=precision, models_dir=models, ensemble=1,  # one model's epochs
                      **settings, **{epochs_field: args.epochs})
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # fastai's progress bars
        trained = fit_learner(cfg)
    card, model = trained.card, trained.learn.model
    phase = "head" if settings["pretrained"] else "scratch"
    epochs = [h["seconds"] for h in card.history if h["phase"] == phase]
    whole = forward_gflops(model, args.size)
    if settings["pretrained"]:
        split = split_model(model, card.config["top_stages"])
        step = whole - forward_gflops(split.frozen, args.size)
        views = card.config["head_views"]
    else:
        split, step, views = None, whole, 1
    return {"epoch_s": min(epochs), "cache_s": card.wall_time_s[phase] - sum(epochs) if split else 0.0,
            "images": card.split["train"] * views, "gflop": TRAIN_STEP_FORWARDS * step, "split": split,
            "precision": card.precision}


def cache_forward(frozen: torch.nn.Module, size: int) -> None:
    """Part 2: the frozen part over one batch, eager against ONNX Runtime."""
    x = torch.randn(HEAD_BS, 3, size, size)
    eager = frozen.eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = eager(x.contiguous(memory_format=torch.channels_last))
        ort = onnx_module(frozen, torch.zeros(2, 3, size, size))
        diff = float((ort(x) - want).abs().max())
        rows = {"eager PyTorch, channels-last": per_image_ms(lambda: eager(x.contiguous(memory_format=torch.channels_last)), HEAD_BS),
                "ONNX Runtime": per_image_ms(lambda: ort(x), HEAD_BS)}
    base = rows["eager PyTorch, channels-last"]
    print(f"\nbatch {HEAD_BS}, {size} px, {torch.get_num_threads()} threads\n")
    print("| frozen part, forward (the cache) | ms per image | × eager | max abs diff |")
    print("|---|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} | {base / ms:.2f} | {diff if name == 'ONNX Runtime' else 0:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=GROCERY if GROCERY.is_dir() else SAMPLE_DIR)
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--top-groups", type=int, default=21)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each run; its fastest is reported")
    ap.add_argument("--workers", type=int, default=None, help="train's --workers (default: 0 on CPU)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"] if cpu_has_bf16() else ["fp32"],
                    help="train's --precision values (default: bf16 too where the CPU has native bf16)")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--rounds", type=int, default=1, help="runs of each case, alternating; the fastest epoch is kept")
    ap.add_argument("--peak-n", type=int, default=4096, help="matrix side of the yardstick's peak")
    args = ap.parse_args()
    print(summary())

    cases = [(r, p) for r in args.recipes for p in args.precision]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for case in cases:
                runs[case].append(timed_run(args, *case, Path(tmp)))
    peak = peak_gflops(n=args.peak_n)
    print(f"\n{args.arch}, {args.data.name}, top {args.top_groups or 'all'} groups, {args.size} px, batch {args.bs}, "
          f"{torch.get_num_threads()} threads; fp32 matmul peak {peak:.0f} GFLOP/s")
    print("| `train` | precision | images per epoch | cache s | s per epoch (fastest) | images/s | × first precision | "
          "GFLOP per image step | share of fp32 peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    first: dict[str, float] = {}
    for (recipe, precision), got in runs.items():
        best = min(got, key=lambda r: r["epoch_s"])
        rate = best["images"] / best["epoch_s"]
        first.setdefault(recipe, rate)
        cache = f"{min(r['cache_s'] for r in got):.1f}" if best["split"] is not None else "—"
        print(f"| {recipe} | {best['precision']} | {best['images']} | {cache} | "
              f"{best['epoch_s']:.1f} | {rate:.1f} | {rate / first[recipe]:.2f} | {best['gflop']:.2f} | "
              f"{fraction(rate, best['gflop'], peak)} |")
    split = next((r["split"] for got in runs.values() for r in got if r["split"] is not None), None)
    if split is not None:
        cache_forward(split.frozen, args.size)


if __name__ == "__main__":
    main()
