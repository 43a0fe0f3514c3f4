"""Does training the top of the pretrained body help on photos from another occasion? Cached feature maps.

The body up to stage `k` stays frozen, and its output maps for every photo (and its mirror image) are
computed once; the remaining stages, the final 1x1 convolution and fastai's head then train on those
maps for a few epochs — cheap, because the top stages run at 7x7. BatchNorm keeps its ImageNet
statistics (eval mode) so the body cannot drift towards one photo session. Trained on `train_` photos,
tested on `val_` photos, mean ± sd over seeds; stage `7` trains the head alone (the features recipe
with `--top-stages 0`).

    python bench/partial_study.py --data ../shared/data/grocery-store --from-stages 7 6 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.table import ID, LABEL, PATH, SAMPLE_DIR, clean, read_table
from shopee_fastai.nets.body import input_stats

from recipe_study import mirrored, pretrained_body  # bench/recipe_study.py, beside this script
from shopee_fastai.machine import summary

BS = 32
STEM_STAGES = 6  # maps are cached after blocks[:6] (192 x 7 x 7 at 224 px); the last stage and conv_head can train


def stem_maps(model, paths: list[str], size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Output maps of the first STEM_STAGES stages for each photo and its mirror image (fp16 storage; computed in fp32)."""
    return mirrored(lambda x: model.blocks[:STEM_STAGES](model.bn1(model.conv_stem(x))).half(), paths, size, mean, std)


class Top(nn.Module):
    """Stages `k`.. of the body, its final conv, and fastai's head."""

    def __init__(self, model, k: int, n_classes: int):
        super().__init__()
        import copy

        from fastai.vision.learner import create_head

        self.frozen = copy.deepcopy(model.blocks[STEM_STAGES:k]).eval().requires_grad_(False)
        self.trained = copy.deepcopy(nn.Sequential(*model.blocks[k:], model.conv_head, model.bn2))
        self.head = create_head(model.num_features, n_classes)  # concat pool doubles it

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # ImageNet statistics stay
        self.head.train(mode)  # the head's BatchNorm1d learns its own statistics, as in fastai
        return self

    def forward(self, x):
        with torch.no_grad():
            x = self.frozen(x)
        return self.head(self.trained(x))


def fit(top: Top, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, body_lr: float, smooth: float, seed: int) -> Top:
    torch.manual_seed(seed)
    steps = -(-len(x) // 64)
    groups = [{"params": top.head.parameters(), "lr": lr}]
    if any(p.requires_grad for p in top.trained.parameters()):
        groups.append({"params": top.trained.parameters(), "lr": body_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=epochs * steps)
    for _ in range(epochs):
        top.train()
        order = torch.randperm(len(x))
        for s in range(steps):
            idx = order[s * 64 : (s + 1) * 64]
            loss = F.cross_entropy(top(x[idx].float().contiguous(memory_format=torch.channels_last)), y[idx], label_smoothing=smooth)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return top.eval()


def predict(top: Top, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([top(x[b : b + 256].float().contiguous(memory_format=torch.channels_last)).softmax(1)
                          for b in range(0, len(x), 256)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--from-stages", type=int, nargs="+", default=[7, 6])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10])
    ap.add_argument("--body-lr", type=float, nargs="+", default=[2e-4])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--smooth", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--top-groups", type=int, nargs="+", default=[21, 0])
    ap.add_argument("--holdout", default="^val_")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/partial_study"))
    args = ap.parse_args()
    print(summary())

    table = clean(read_table(args.data), 0)
    paths = list(table[PATH])
    model = pretrained_body(args.arch)
    args.cache.mkdir(parents=True, exist_ok=True)
    f = args.cache / f"{args.arch}-{args.size}-{len(paths)}-stem{STEM_STAGES}.pt"
    if not f.is_file():
        t = time.perf_counter()
        torch.save(stem_maps(model, paths, args.size, *input_stats(args.arch)), f)
        print(f"stem maps: {time.perf_counter() - t:.0f} s for {len(paths)} photos x 2", flush=True)
    plain, flipped = torch.load(f)
    test_mask = table[ID].astype(str).str.contains(args.holdout).to_numpy()
    print("| groups | trained from stage | epochs | body lr | val_ accuracy, mirror TTA (mean ± sd) | train s per run |")
    print("|---|---|---|---|---|---|")
    for top_n in args.top_groups:
        keep = table[LABEL].isin(clean(table, top_n)[LABEL].unique()).to_numpy() if top_n else np.ones(len(table), bool)
        vocab = {v: i for i, v in enumerate(sorted(table[LABEL][keep].astype(str).unique()))}
        y_all = torch.tensor([vocab.get(v, -1) for v in table[LABEL].astype(str)])
        tr, te = torch.from_numpy(keep & ~test_mask), torch.from_numpy(keep & test_mask)
        x, y = torch.cat([plain[tr], flipped[tr]]), y_all[tr].repeat(2)
        for k in args.from_stages:
            for epochs in args.epochs:
                for body_lr in args.body_lr if k < 7 else [0.0]:
                    accs, secs = [], []
                    for seed in range(args.seeds):
                        t = time.perf_counter()
                        top = fit(Top(model, k, len(vocab)), x, y, epochs, args.lr, body_lr, args.smooth, seed)
                        secs.append(time.perf_counter() - t)
                        p = (predict(top, plain[te]) + predict(top, flipped[te])) / 2
                        accs.append(float((p.argmax(1) == y_all[te]).float().mean()))
                    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                    print(f"| {top_n or 'all'} ({len(vocab)}) | {k if k < 7 else 'head only'} | {epochs} | {body_lr:g} | "
                          f"{statistics.mean(accs):.3f} ± {sd:.3f} | {statistics.mean(secs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
