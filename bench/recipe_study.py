"""Which head recipe generalises to photos from another occasion? Frozen pretrained features, measured on `val_` photos.

Features of every photo (and its mirror image) are computed once per input size with the pretrained body in
eval mode, then many heads are trained on them in seconds: fastai's head vs a linear probe, label smoothing,
epochs, input size, several sizes at once, and mirror TTA. Trained on the `train_` photos, tested on the
`val_` photos (shot on another occasion), mean ± sd over seeds.

    python bench/recipe_study.py --data ../shared/data/grocery-store --sizes 224 288 352 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.images import decode
from shopee_fastai.data.table import ID, LABEL, PATH, SAMPLE_DIR, clean, read_table
from shopee_fastai.inference.torch_backends import normalised
from shopee_fastai.nets.body import input_stats
from shopee_fastai.nets.weights import resolve_weights
from shopee_fastai.machine import summary

BS = 32


def pretrained_body(arch: str, **timm_kwargs):
    """The pretrained timm network without its classifier, eval mode, channels-last (the studies share it)."""
    import timm

    m = timm.create_model(arch, pretrained=True, num_classes=0, **resolve_weights(arch, True).timm_kwargs, **timm_kwargs)
    return m.eval().to(memory_format=torch.channels_last)


def mirrored(fn, paths: list[str], size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn` of every photo and of its mirror image, from one full decoding of each batch (fastai's validation preprocessing)."""
    from fastprogress.fastprogress import progress_bar

    plain, flipped = [], []
    with ThreadPoolExecutor(2) as pool, torch.inference_mode():
        for b in progress_bar(range(0, len(paths), BS)):
            x = normalised(np.stack(list(pool.map(lambda p: decode(p, size, draft=False), paths[b : b + BS]))), mean, std)
            plain.append(fn(x))
            flipped.append(fn(x.flip(-1)))
    return torch.cat(plain), torch.cat(flipped)


def features(model, paths: list[str], size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2c] (max and average pooled, as fastai's head sees them) for each photo and for its mirror image."""

    def pooled(x):
        f = model.forward_features(x)
        return torch.cat([f.amax((2, 3)), f.mean((2, 3))], 1)

    return mirrored(pooled, paths, size, mean, std)


def fastai_head(n_in: int, n_out: int) -> nn.Module:
    from fastai.vision.learner import create_head

    return create_head(n_in, n_out, pool=False)  # the layers the features recipe trains


def linear_head(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(n_in), nn.Linear(n_in, n_out))


HEADS = {"fastai": fastai_head, "linear": linear_head}


def fit(head: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, wd: float, smooth: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    steps = -(-len(x) // 64)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(x))
        for s in range(steps):
            idx = order[s * 64 : (s + 1) * 64]
            loss = F.cross_entropy(head(x[idx]), y[idx], label_smoothing=smooth)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 288, 352])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--top-groups", type=int, nargs="+", default=[21, 0])
    ap.add_argument("--holdout", default="^val_")
    ap.add_argument("--only", type=int, nargs="+", help="run only these variants (0-based rows of the table per group set)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/recipe_study"))
    ap.add_argument("--epochs", type=int, help="every variant's epochs (default: each its own)")
    args = ap.parse_args()
    print(summary())

    table = clean(read_table(args.data), 0)
    paths = list(table[PATH])
    mean, std = input_stats(args.arch)
    model = pretrained_body(args.arch, global_pool="")
    args.cache.mkdir(parents=True, exist_ok=True)
    feats = {}
    for size in args.sizes:
        f = args.cache / f"{args.arch}-{size}-{len(paths)}.pt"
        if not f.is_file():
            t = time.perf_counter()
            torch.save(features(model, paths, size, mean, std), f)
            print(f"features at {size} px: {time.perf_counter() - t:.0f} s for {len(paths)} photos x 2", flush=True)
        feats[size] = torch.load(f)

    test_mask = table[ID].astype(str).str.contains(args.holdout).to_numpy()
    print(f"{(~test_mask).sum()} training photos, {test_mask.sum()} test photos ({args.holdout})")
    base = args.sizes[0]
    variants = [  # (head, epochs, lr, wd, smoothing, sizes, mirror TTA)
        ("fastai", 30, 2e-3, 0.01, 0.0, (base,), False),  # fastai's head alone, no smoothing, no TTA: the baseline row
        ("fastai", 30, 2e-3, 0.01, 0.0, (base,), True),
        ("fastai", 30, 2e-3, 0.01, 0.1, (base,), True),
        ("linear", 30, 2e-3, 0.01, 0.0, (base,), True),
        ("linear", 30, 2e-3, 0.01, 0.1, (base,), True),
        ("fastai", 60, 2e-3, 0.01, 0.1, (base,), True),
        ("fastai", 30, 1e-2, 0.1, 0.1, (base,), True),
    ] + [("fastai", 30, 2e-3, 0.01, 0.1, (s,), True) for s in args.sizes if s != base] \
      + [("linear", 30, 2e-3, 0.01, 0.1, (s,), True) for s in args.sizes if s != base] \
      + [("fastai", 30, 2e-3, 0.01, 0.1, tuple(args.sizes), True),
         ("linear", 30, 2e-3, 0.01, 0.1, tuple(args.sizes), True)]
    variants = [v for i, v in enumerate(variants) if set(v[5]) <= set(args.sizes) and (args.only is None or i in args.only)]
    if args.epochs:
        variants = [(v[0], args.epochs, *v[2:]) for v in variants]
    print("| groups | head | epochs | lr | wd | label smoothing | sizes | mirror TTA | val_ accuracy (mean ± sd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for top in args.top_groups:
        keep = table[LABEL].isin(clean(table, top)[LABEL].unique()).to_numpy() if top else np.ones(len(table), bool)
        vocab = {v: i for i, v in enumerate(sorted(table[LABEL][keep].astype(str).unique()))}
        y_all = torch.tensor([vocab.get(v, -1) for v in table[LABEL].astype(str)])
        tr, te = torch.from_numpy(keep & ~test_mask), torch.from_numpy(keep & test_mask)
        for head_name, epochs, lr, wd, smooth, sizes, tta in variants:
            x_plain = torch.cat([feats[s][0] for s in sizes], 1)
            x_flip = torch.cat([feats[s][1] for s in sizes], 1)
            x = torch.cat([x_plain[tr], x_flip[tr]])
            y = y_all[tr].repeat(2)
            accs = []
            for seed in range(args.seeds):
                head = fit(HEADS[head_name](x.shape[1], len(vocab)), x, y, epochs, lr, wd, smooth, seed)
                with torch.no_grad():
                    p = head(x_plain[te]).softmax(1)
                    if tta:
                        p = (p + head(x_flip[te]).softmax(1)) / 2
                accs.append(float((p.argmax(1) == y_all[te]).float().mean()))
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {top or 'all'} ({len(vocab)}) | {head_name} | {epochs} | {lr:g} | {wd:g} | {smooth:g} | "
                  f"{'+'.join(map(str, sizes))} | {'yes' if tta else 'no'} | {statistics.mean(accs):.3f} ± {sd:.3f} |", flush=True)


if __name__ == "__main__":
    main()
