"""Training-loop overhead: `train`'s fastai loop against a plain PyTorch loop over the same tensors, side by side.

Both train the same network (same architecture and initial weights, batch size and image size,
augmentation off) with Adam and a one-cycle schedule. The plain loop iterates over batches already
in memory; fastai's loop decodes the prepared cache through its DataLoader as `train` does, so the
ratio includes everything `train` adds: data loading, transforms, callbacks, optimizer. A callback
times how long each batch waited for data, which gives the data loader's share of the epoch.

    python bench/train_speed.py --data ../shared/data/grocery-store --images 320 --size 160
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from shopee_fastai.config import OFFLINE_ARCH, Aug
from shopee_fastai.data.split import SPLIT, TRAIN, VALID
from shopee_fastai.data.table import PATH, SAMPLE_DIR, clean, read_table

from yardstick import forward_gflops, fraction, peak_gflops  # bench/yardstick.py, beside this script
from shopee_fastai.machine import summary

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery-store"
LR = 1e-3
TRAIN_STEP_FLOPS = 3  # forward + backward ≈ 3 forwards


def learner(data: Path, arch: str, n: int, size: int, bs: int, workers: int | None, precision: str = "auto"):
    from fastai.callback.core import Callback

    import pandas as pd

    from shopee_fastai.config import TrainConfig
    from shopee_fastai.data.cache import prepare, use_cache
    from shopee_fastai.data.loaders import LoaderConfig, make_dataloaders
    from shopee_fastai.nets.body import input_stats
    from shopee_fastai.nets.weights import WeightsChoice
    from shopee_fastai.training.learner import build_learner

    table = clean(read_table(data), 0).sample(frac=1, random_state=0).head(n).reset_index(drop=True)
    prepare(list(table[PATH]), size, progress=False)  # "data already cached", as after `shopee-fastai prepare`
    table[PATH] = use_cache(table[PATH], size)[0]
    # a token valid set of training rows: every label is known, and validation is not what is timed
    table = pd.concat([table.assign(**{SPLIT: TRAIN}), table.head(bs).assign(**{SPLIT: VALID})], ignore_index=True)
    dls = make_dataloaders(table, input_stats(arch), LoaderConfig(size, bs, Aug.none, workers))
    learn = build_learner(dls, TrainConfig(data=data, arch=arch, size=size, bs=bs, precision=precision), WeightsChoice(False, "random init"))

    class Waits(Callback):
        """Time spent waiting for each batch (between one step's end and the next batch's arrival)."""

        order = -10

        def before_train(self):
            self.wait, self.start = 0.0, time.perf_counter()
            self.mark = self.start

        def before_batch(self):
            self.wait += time.perf_counter() - self.mark

        def after_batch(self):
            self.mark = time.perf_counter()

        def after_train(self):
            self.seconds = time.perf_counter() - self.start

    learn.add_cb(Waits())
    return learn


def fastai_epoch(learn) -> tuple[float, float]:
    """(images/s, data-wait share) of one training epoch of fastai's fit_one_cycle (validation excluded)."""
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, LR)
    cb = learn.waits
    return len(learn.dls.train) * learn.dls.bs / cb.seconds, cb.wait / cb.seconds


def plain_epoch(model, batches, lr: float = LR, channels_last: bool = False) -> float:
    """Images/s of a hand-written loop: Adam, one-cycle, cross-entropy, tensors already in memory."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    batches = [(x.contiguous(memory_format=fmt), y) for x, y in batches]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(batches))
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=GROCERY if GROCERY.is_dir() else SAMPLE_DIR)
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fastai's)")
    ap.add_argument("--precision", default="auto", help="train's --precision (auto: fp32 on CPU)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds after an untimed warm-up round; the best of each side is kept")
    ap.add_argument("--peak-n", type=int, default=4096, help="matrix side of the yardstick's peak")
    args = ap.parse_args()
    print(summary())

    learn = learner(args.data, args.arch, args.images, args.size, args.bs, args.workers, args.precision)
    batches = [(x.as_subclass(torch.Tensor).clone(), y.as_subclass(torch.Tensor).clone()) for x, y in learn.dls.train]
    start_state = copy.deepcopy(learn.model.state_dict())
    plain_model = copy.deepcopy(learn.model)
    print(f"{args.arch}, {len(batches)} batches of {args.bs} at {args.size} px, {torch.get_num_threads()} threads, "
          f"DataLoader workers {learn.dls.train.fake_l.num_workers}, train precision {learn.precision}")
    fast, plain, plain_cl, waits = [], [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up both sides (allocator, oneDNN kernels for these shapes)
        learn.model.load_state_dict(start_state)
        learn.create_opt()
        rate, wait = fastai_epoch(learn)
        fast.append(rate)
        waits.append(wait)
        for out, cl in ((plain, False), (plain_cl, True)):
            plain_model.load_state_dict(start_state)
            out.append(plain_epoch(plain_model, batches, channels_last=cl))
        if r == 0:
            fast, plain, plain_cl, waits = [], [], [], []
    best_fast, best_plain, best_cl = max(fast), max(plain), max(plain_cl)
    peak = peak_gflops(n=args.peak_n)
    step = TRAIN_STEP_FLOPS * forward_gflops(copy.deepcopy(plain_model), args.size)
    print(f"\nyardstick: fp32 matmul peak {peak:.0f} GFLOP/s; a training step ≈ {step:.2f} GFLOP per image\n")
    print("| training loop | images/s (best of rounds) | × plain | × plain channels-last | data-wait share | share of fp32 peak |")
    print("|---|---|---|---|---|---|")
    for label, rate, wait in (("plain PyTorch, NCHW, tensors in memory", best_plain, 0.0),
                              ("plain PyTorch, channels-last, tensors in memory", best_cl, 0.0),
                              (f"shopee-fastai train ({learn.precision}, fastai fit_one_cycle, cached JPEGs)", best_fast, min(waits))):
        print(f"| {label} | {rate:.1f} | {rate / best_plain:.2f} | {rate / best_cl:.2f} | {100 * wait:.1f} % | "
              f"{fraction(rate, step, peak)} |")


if __name__ == "__main__":
    main()
