"""Train a pretrained learner's head (and the top of its body) on frozen-body outputs computed once.

With the body frozen, every epoch of fastai's frozen phase runs the whole body forward (and, since
fastai keeps BatchNorm trainable, backward) for the same images. Here the frozen part's output for each
training image, its mirror image (as real a product photo as the original) and optionally more randomly
augmented views is computed once, in eval mode (BatchNorm keeps its ImageNet statistics, so the body
cannot drift towards one photo session), and the trained part learns on it in seconds to minutes. With
`top_stages` 0 the frozen part is the whole body and the head learns on pooled features; with N > 0 the
last N stages of an EfficientNet-style timm body and its final 1x1 convolution learn too (at 1/16 to 1/32
of the input side, so they cost a fraction of full fine-tuning), at a lower learning rate. The model is
the same fastai learner, so export, predict and fine-tuning work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ShopeeError

HEAD_BS = 64
LABEL_SMOOTHING = 0.1  # on photos from another occasion: top-21 0.851 -> 0.879, 81 groups 0.691 -> 0.697 (bench/recipe_study.py)
TOP_STAGES = 3  # last body stages trained with the head where the body allows; 81 groups: 0 / 1 / 2 stages 0.662 / 0.714 / 0.801 (3 seeds), 3 / 4 stages 0.845 / 0.824 (seed 1, 4 views) (README "Results")
BODY_LR = 5e-4  # learning rate of those stages (the head's is --lr): beat 2e-4 on photos from another occasion (README); 1e-3 diverged mid-run in train
# fastai initialises the head kaiming-normal; PyTorch's default init (smaller weights) generalised better to photos
# from another occasion: 81 groups, last stage trained, seed 1: 0.669 -> 0.710 (README "Results").
HEAD_EPOCHS = {False: 30, True: 5}  # epochs over all views, without / with body stages training: 60 / 20 passes per image (bench/*_study.py, README "Results")
# Cached views of each training image (itself, its mirror, then random augmentations), without / with body stages
# training; 81 groups, 3 stages, seed 1: 2 views x 10 epochs 0.821, 4 x 5 0.845. The head alone keeps its measured 2 x 30.
HEAD_VIEWS = {False: 2, True: 4}
_TIMM_TOP = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")  # EfficientNet / MobileNet layout in timm

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Split:
    """A learner's model cut in two: `frozen` (image -> cached input) and `trained` (cached input -> logits)."""

    frozen: nn.Module
    trained: nn.Module
    body: nn.Module | None  # the body stages inside `trained`, whose BatchNorm keeps its ImageNet statistics


def _timm_stages(model: nn.Module) -> nn.Module | None:
    """The timm network inside a fastai vision_learner model if it has EfficientNet's layout, else None."""
    net = getattr(model[0], "model", None)  # fastai's TimmBody wraps the timm model
    return net if net is not None and all(hasattr(net, a) for a in _TIMM_TOP) else None


def resolve(model: nn.Module, top_stages: int | None, epochs: int | None, views: int | None = None) -> dict[str, int]:
    """The head phase's `top_stages`, `head_epochs` and `head_views` where the user left them to their defaults.

    top_stages None: TOP_STAGES where the body has EfficientNet's layout, else the head alone.
    """
    if top_stages is None:
        top_stages = TOP_STAGES if _timm_stages(model) is not None else 0
    body = top_stages > 0
    return {"top_stages": top_stages, "head_epochs": HEAD_EPOCHS[body] if epochs is None else epochs,
            "head_views": HEAD_VIEWS[body] if views is None else views}


def split_model(model: nn.Module, top_stages: int) -> Split:
    """Cut a fastai vision_learner model so that the last `top_stages` body stages train with the head."""
    from torch import nn

    from .models import feature_extractor

    if top_stages == 0:
        return Split(feature_extractor(model).eval(), model[1][2:], None)  # head layers after concat pool + flatten
    net = _timm_stages(model)
    if net is None:
        raise ShopeeError(f"--top-stages {top_stages}: only EfficientNet/MobileNet-style timm bodies (conv_stem, blocks, "
                          "conv_head) can train their top stages here; use --top-stages 0")
    n = len(net.blocks)
    if top_stages > n:
        raise ShopeeError(f"--top-stages {top_stages}: the body has {n} stages; choose 0 to {n}")
    frozen = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[: n - top_stages]).eval()
    body = nn.Sequential(*net.blocks[n - top_stages :], net.conv_head, net.bn2)
    return Split(frozen, nn.Sequential(body, model[1]), body)


def _cacher(frozen: nn.Module, half: bool):
    """`frozen` as the caches run it: eval mode and channels-last (2-3x faster on CPU too); each output moves to
    main memory (batches go back to the device as they train), in fp16 with `half`."""
    import torch

    frozen = frozen.eval().to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = frozen(x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)).cpu()
        return out.half() if half else out

    return run


def frozen_outputs(learn, frozen: nn.Module, paths: list[str], mirror: bool = False, progress: bool = True,
                   half: bool = False):
    """`frozen` of every image (eval mode, the learner's validation preprocessing), and its readable paths.

    With `mirror`, [2n, ...]: each image, then every mirror image, from one decoding pass. `half` stores
    fp16 (feature maps are large; they are computed in fp32 and trained on in fp32).
    """
    import torch

    from .predict import test_dls

    run = _cacher(frozen, half)
    plain, flipped, done = [], [], []
    with torch.no_grad():  # not inference_mode: these tensors feed the head's autograd afterwards
        for ok, dl, _ in test_dls(learn, [Path(p) for p in paths], progress=progress):
            for (x,) in dl if dl is not None else []:
                plain.append(run(x))
                if mirror:
                    flipped.append(run(x.flip(-1)))
            done += [str(p) for p in ok]
    return (torch.cat(plain + flipped) if plain else torch.empty(0)), done


def augmented_outputs(learn, frozen: nn.Module, n: int, half: bool = False, progress: bool = True):
    """`frozen` of `n` randomly augmented passes over the training images (the learner's training pipeline:
    random crop and `aug_transforms`), in the training set's order, with their labels."""
    import torch
    from fastprogress.fastprogress import progress_bar

    run = _cacher(frozen, half)
    dl = learn.dls.train.new(shuffle=False, drop_last=False)
    xs, ys = [], []
    with torch.no_grad():
        for _ in range(n):
            for x, y in progress_bar(dl, leave=False) if progress else dl:  # fastprogress draws a bar even with display=False
                xs.append(run(x))
                ys.append(y.as_subclass(torch.Tensor).cpu())
    return (torch.cat(xs), torch.cat(ys)) if xs else (torch.empty(0), torch.empty(0, dtype=torch.long))


def _train_mode(split: Split) -> None:
    from torch import nn

    split.trained.train()
    for m in split.body.modules() if split.body is not None else []:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # ImageNet statistics stay; the head's BatchNorm1d learns its own, as in fastai


def fit_head(learn, epochs: int, lr: float, wd: float = 0.01, seed: int = 42, smoothing: float = LABEL_SMOOTHING,
             top_stages: int = 0, body_lr: float = BODY_LR, views: int = HEAD_VIEWS[False],
             mixup: float = 0.0) -> list[dict[str, Any]]:
    """One-cycle AdamW with label smoothing on the trained part, over cached frozen outputs; per-epoch history.

    `views` per training image are cached: 1 the image, 2 and its mirror, more add random augmentations.
    An epoch is one pass over all of them. `mixup` > 0 mixes each batch's inputs and targets with a shuffled
    copy of itself, weight drawn from Beta(mixup, mixup).
    """
    import torch
    from torch.nn import functional as F

    from fastai.torch_core import set_seed
    from fastprogress.fastprogress import master_bar, progress_bar

    from . import data as D

    device = learn.dls.device
    learn.model.to(device)  # fastai moves it only when a fit starts; the head phase comes first
    split = split_model(learn.model, top_stages)
    maps = split.body is not None
    set_seed(seed, reproducible=True)
    vocab = {str(v): i for i, v in enumerate(learn.dls.vocab)}
    sets = {}
    for name, ds, mirror in (("train", learn.dls.train_ds, views > 1), ("valid", learn.dls.valid_ds, False)):
        items = ds.items
        label = dict(zip(items[D.PATH].map(lambda p: str(Path(p))), items[D.LABEL].astype(str)))
        x, kept = frozen_outputs(learn, split.frozen, list(items[D.PATH]), mirror=mirror, half=maps)
        y = torch.tensor([vocab[label[p]] for p in kept], dtype=torch.long)
        sets[name] = (x, y.repeat(2) if mirror else y)
    if views > 2:
        x_aug, y_aug = augmented_outputs(learn, split.frozen, views - 2, half=maps)
        sets["train"] = (torch.cat([sets["train"][0], x_aug]), torch.cat([sets["train"][1], y_aug]))

    def batch(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if maps else x

    for m in learn.model[1].modules():  # PyTorch's default init, not fastai's kaiming-normal: see the note above HEAD_EPOCHS
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    groups = [{"params": list(learn.model[1].parameters()), "lr": lr}]
    if maps:
        split.body.requires_grad_(True)
        groups.append({"params": list(split.body.parameters()), "lr": body_lr})
    x_train, y_train = sets["train"]
    steps = max(1, -(-len(x_train) // HEAD_BS))
    opt = torch.optim.AdamW(groups, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=epochs * steps)
    history = []
    bar = master_bar(range(epochs))
    for epoch in bar:
        _train_mode(split)
        order = torch.randperm(len(x_train))
        total = 0.0
        for s in progress_bar(range(steps), parent=bar):
            idx = order[s * HEAD_BS : (s + 1) * HEAD_BS]
            xb, yb = batch(x_train[idx]), y_train[idx].to(device)
            if mixup > 0:
                lam = float(torch.distributions.Beta(mixup, mixup).sample())
                perm = torch.randperm(len(idx), device=device)
                out = split.trained(lam * xb + (1 - lam) * xb[perm])
                loss = lam * F.cross_entropy(out, yb, label_smoothing=smoothing) + \
                    (1 - lam) * F.cross_entropy(out, yb[perm], label_smoothing=smoothing)
            else:
                loss = F.cross_entropy(split.trained(xb), yb, label_smoothing=smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        split.trained.eval()
        row = {"phase": "head", "epoch": epoch, "train_loss": total / len(x_train)}
        x_valid, y_valid = sets["valid"]
        if len(x_valid):
            with torch.no_grad():
                out = torch.cat([split.trained(batch(x_valid[b : b + 256])) for b in range(0, len(x_valid), 256)])
            out = out.cpu()
            row.update(valid_loss=float(F.cross_entropy(out, y_valid)), accuracy=float((out.argmax(1) == y_valid).float().mean()))
        history.append(row)
        bar.write("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return history
