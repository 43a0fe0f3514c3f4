"""Do denormal floats slow `lr-find` on CPU? The same LR range test with denormals kept vs flushed to zero.

Denormals (|x| < 1.2e-38 in fp32) go through a slow path on x86 CPUs; they appear as gradients and
Adam's moment estimates shrink. `torch.set_flush_denormal(True)` treats them as zero. Alternating
rounds, best of each side; also prints how many denormal values the optimizer state held at the end.

    python bench/denormals.py --data ../shared/data/grocery-store --arch tf_efficientnet_lite0 --pretrained
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback

from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.machine import summary
from shopee_fastai.training.learner import setup

TINY = torch.finfo(torch.float32).tiny  # smallest normal fp32


def denormal_share(learn) -> float:
    """Share of gradient, parameter and optimizer-state values that are denormal (non-zero, below the smallest normal)."""
    total = small = 0
    tensors = [t.detach() for p in learn.model.parameters() for t in (p, p.grad) if t is not None]
    for state in learn.opt.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    for t in tensors:
        a = t.abs()
        small += int(((a > 0) & (a < TINY)).sum())
        total += t.numel()
    return small / max(total, 1)


class ShareTracker(Callback):
    """Keeps the largest denormal share seen after an optimizer step (every 10th)."""

    def before_fit(self):
        self.worst = 0.0

    def after_step(self):
        if self.iter % 10 == 9:
            self.worst = max(self.worst, denormal_share(self.learn))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--num-it", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(summary())

    cfg = TrainConfig(data=args.data, arch=args.arch, pretrained=args.pretrained, size=args.size, split="random",
                      top_groups=0, aug="none")
    learn = setup(cfg)[-1]  # the learner `train` and `lr-find` build
    tracker = ShareTracker()
    times: dict[bool, list[float]] = {False: [], True: []}
    share = {}
    for _ in range(args.rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            start = time.perf_counter()
            with learn.no_bar(), learn.no_logging(), learn.added_cbs(tracker):
                learn.lr_find(num_it=args.num_it, show_plot=False, stop_div=False)
            times[flush].append(time.perf_counter() - start)
            share[flush] = tracker.worst
    kept, flushed = min(times[False]), min(times[True])
    print(f"lr_find, {args.num_it} iterations, {args.arch} {'pretrained' if args.pretrained else 'scratch'}, {args.size} px")
    print("| denormals | seconds (best) | × kept | largest denormal share seen |")
    print("|---|---|---|---|")
    print(f"| kept (PyTorch default) | {kept:.1f} | 1.00 | {share[False]:.2e} |")
    print(f"| flushed to zero | {flushed:.1f} | {kept / flushed:.2f} | {share[True]:.2e} |")


if __name__ == "__main__":
    main()
