"""The default recipe's trained phase: a fastai Learner over frozen-part outputs computed once.

With the body frozen, every epoch of fastai's frozen phase runs the whole body forward (and, since fastai
keeps BatchNorm trainable, backward) for the same images. Here the frozen part's output for each training
image, its mirror image and random passes through the training augmentations is computed once, in eval
mode (BatchNorm keeps its ImageNet statistics, so the body cannot drift towards one photo session), and
cached in memory. The trained part — the last `top_stages` stages of an EfficientNet-style timm body, its
final 1x1 convolution and fastai's head, or the head alone on pooled features — then trains as an
ordinary fastai Learner over the cache: `fit_one_cycle`, label smoothing through the loss, mixup through
fastai's MixUp callback, and every callback of the other phases (checkpoints, resume, early stop,
keep-best, progress bars, the Recorder). It shares its parameters with the full model, so export,
predict and further fine-tuning see the trained weights. Why these settings: docs/results.md.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from fastai.callback.mixup import MixUp
from fastai.callback.training import GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
from fastai.torch_core import params, set_seed, trainable_params
from fastprogress.fastprogress import progress_bar
from torch import nn

from ..config import ADAM_BETAS, GRAD_CLIP, ResolvedConfig
from ..data.table import LABEL, PATH
from ..errors import ShopeeError
from ..inference.export import onnx_module
from ..inference.torch_backends import input_size, learner_batches
from ..nets.body import Split, split_model
from ..nets.ensemble import Ensemble, ensemble_of, member_split
from .callbacks import FrozenBatchNormStats, configure
from .objective import objective

HEAD_BS = 64
VALID_BS = 256
# One-cycle settings of the trained phase: torch's OneCycleLR defaults (warm-up 30 %, final lr max/2.5e5), with
# PyTorch's AdamW (weight decay on every parameter, config.ADAM_BETAS) behind fastai's OptimWrapper, gradients clipped.
PCT_START, DIV_FINAL = 0.3, 2.5e5


def as_ensemble(learn, cfg: ResolvedConfig) -> None:
    """Make `learn`'s model an Ensemble of `cfg.ensemble` copies of its top part over its lower body, each then
    trained as a phase of its own on the one cache (training/recipes.py)."""
    if not cfg.top_stages:
        raise ShopeeError(f"--ensemble: {cfg.arch}'s body has no stages to train on cached maps; use an "
                          "EfficientNet-style timm --arch")
    learn.model = ensemble_of(learn.model, cfg.top_stages, cfg.ensemble)
    learn.splitter, learn.opt = trainable_params, None  # fastai's default splitter (picklable): one parameter group


@lru_cache(maxsize=1)
def _onnx_frozen(frozen: nn.Module, size: int):
    """The frozen part in ONNX Runtime, exported once for the train, valid and augmented passes of a run."""
    return onnx_module(frozen, torch.zeros(2, 3, size, size))


def _cacher(frozen: nn.Module, half: bool, size: int, device: torch.device):
    """`frozen` as the caches run it, in eval mode: on CPU through ONNX Runtime where it is installed (several
    times faster than eager PyTorch), else PyTorch channels-last. Each output moves to main memory (batches
    go back to the device as they train), in fp16 with `half`."""
    frozen = frozen.eval()
    fast = _onnx_frozen(frozen, size) if device.type == "cpu" else None
    if fast is None:
        frozen = frozen.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.as_subclass(torch.Tensor)
        out = fast(x) if fast is not None else frozen(x.contiguous(memory_format=torch.channels_last)).cpu()
        return out.half() if half else out

    return run


def frozen_outputs(learn, frozen: nn.Module, paths: list[str], mirror: bool = False, progress: bool = True,
                   half: bool = False):
    """`frozen` of every image (eval mode, the learner's validation preprocessing), and its readable paths.

    With `mirror`, [2n, ...]: each image, then every mirror image, from one decoding pass. `half` stores
    fp16 (feature maps are large; they are computed in fp32, and cast back to fp32 for training).
    """
    run = _cacher(frozen, half, input_size(learn), learn.dls.device)
    plain, flipped, done = [], [], []
    with torch.no_grad():  # not inference_mode: these tensors feed the head's autograd afterwards
        for ok, dl, _ in learner_batches(learn, [Path(p) for p in paths], bs=HEAD_BS, progress=progress):
            for (x,) in dl if dl is not None else []:
                plain.append(run(x))
                if mirror:
                    flipped.append(run(x.flip(-1)))
            done += [str(p) for p in ok]
    return (torch.cat(plain + flipped) if plain else torch.empty(0)), done


def augmented_outputs(learn, frozen: nn.Module, n: int, half: bool = False, progress: bool = True):
    """`frozen` of `n` randomly augmented passes over the training images (the learner's training pipeline:
    random crop and `aug_transforms`), in the training set's order, with their labels."""
    run = _cacher(frozen, half, input_size(learn), learn.dls.device)
    dl = learn.dls.train.new(shuffle=False, drop_last=False)
    xs, ys = [], []
    with torch.no_grad():
        for _ in range(n):
            for x, y in progress_bar(dl, leave=False) if progress else dl:  # fastprogress draws a bar even with display=False
                xs.append(run(x))
                ys.append(y.as_subclass(torch.Tensor).cpu())
    return (torch.cat(xs), torch.cat(ys)) if xs else (torch.empty(0), torch.empty(0, dtype=torch.long))


class _Views:
    """Cached tensors served a batch at a time: items are row numbers, a batch is one gather of those rows.

    One gather keeps the cache's channels-last layout, where stacking rows one by one would not.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None):
        self.x, self.y, self.rows = x, y, rows  # `rows`: serve these rows of x alone (one member's fold left out)

    def __len__(self) -> int:
        return len(self.y) if self.rows is None else len(self.rows)

    def __getitem__(self, i: int) -> int:
        return i

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(rows)
        if self.rows is not None:
            idx = self.rows[idx]
        return self.x[idx], self.y[idx]


def _float(batch: tuple) -> tuple:
    """Cached maps are stored fp16; the network trains in fp32."""
    return tuple(t.float() if t.is_floating_point() else t for t in batch)


def cached_views(learn, split: Split, views: int) -> dict[str, Any]:
    """{"train", "valid"}: the frozen part's outputs and labels; `views` per training image (1 itself, 2 and its
    mirror, more add random passes through the training augmentations), one per validation image. "photos":
    the image path of each training row, for member folds; "plain": how many rows are the photos themselves."""
    half = split.body is not None  # feature maps are large: stored fp16
    vocab = {str(v): i for i, v in enumerate(learn.dls.vocab)}
    sets: dict[str, Any] = {}
    for name, ds, mirror in (("train", learn.dls.train_ds, views > 1), ("valid", learn.dls.valid_ds, False)):
        items = ds.items
        label = dict(zip(items[PATH].map(lambda p: str(Path(p))), items[LABEL].astype(str)))
        x, kept = frozen_outputs(learn, split.frozen, list(items[PATH]), mirror=mirror, half=half)
        y = torch.tensor([vocab[label[p]] for p in kept], dtype=torch.long)
        sets[name] = (x, y.repeat(2) if mirror else y)
        if name == "train":
            sets["plain"], sets["photos"] = len(kept), kept * (2 if mirror else 1)
    if views > 2:
        x_aug, y_aug = augmented_outputs(learn, split.frozen, views - 2, half=half)
        sets["train"] = (torch.cat([sets["train"][0], x_aug]), torch.cat([sets["train"][1], y_aug]))
        sets["photos"] += [str(Path(p)) for p in learn.dls.train_ds.items[PATH]] * (views - 2)
    return sets


def fold_views(sets: dict[str, Any], folds: dict[str, int], member: int) -> tuple[_Views, _Views]:
    """Member `member`'s training rows (every view of every photo outside its fold) and validation rows (its
    fold's photos themselves), served from the one cache."""
    fold = torch.tensor([folds.get(p, -1) for p in sets["photos"]])
    x, y = sets["train"]
    own = fold == member
    return _Views(x, y, torch.nonzero(~own).flatten()), _Views(x, y, torch.nonzero(own[: sets["plain"]]).flatten())


def features_learner(learn, cfg: ResolvedConfig, member: int = 0, shared: dict | None = None,
                     folds: dict[str, int] | None = None):
    """A Learner that trains `learn.model`'s top part on cached frozen-part outputs (settings resolved in `cfg`).

    For an ensemble (`learn.model` an Ensemble), the top part of `member`, seeded `cfg.seed + member`; the
    cache is computed once per process and kept in `shared` for the other members. With `folds` (image path ->
    fold), the member validates on its own fold and trains on every other photo's views.
    """
    device = learn.dls.device
    learn.model.to(device)  # fastai moves it only when a fit starts; this phase comes first
    ensemble = isinstance(learn.model, Ensemble)
    split = member_split(learn.model, member) if ensemble else split_model(learn.model, cfg.top_stages)
    shared = {} if shared is None else shared
    set_seed(cfg.seed, reproducible=True)
    if "sets" not in shared:
        shared["sets"] = cached_views(learn, split, cfg.head_views)
    # the last member takes the cache, so it is freed with its learner rather than kept through later phases
    sets = shared["sets"] if member < cfg.ensemble - 1 else shared.pop("sets")
    if member:
        set_seed(cfg.seed + member, reproducible=True)
    # the head (all of `trained` when no body stage trains): PyTorch's default init, not fastai's kaiming-normal
    # (docs/results.md)
    for m in (split.trained[-1] if split.body is not None else split.trained).modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    train, valid = fold_views(sets, folds, member) if folds is not None else (_Views(*sets["train"]), _Views(*sets["valid"]))
    dls = DataLoaders(DataLoader(train, bs=HEAD_BS, shuffle=True, drop_last=False, create_batch=train.batch, after_batch=_float),
                      DataLoader(valid, bs=VALID_BS, create_batch=valid.batch, after_batch=_float), device=device)
    body = split.body
    goal = objective(cfg, len(learn.dls.vocab), cfg.label_smoothing)
    cbs: list = goal.callbacks + ([FrozenBatchNormStats(body)] if body is not None else []) + [GradientClip(GRAD_CLIP)]
    if cfg.mixup:
        cbs.append(MixUp(cfg.mixup))
    if body is not None:
        body.requires_grad_(True)
    # the margin loss's class centres train with the head
    head = (lambda m: params(m[1]) + goal.params) if body is not None else (lambda m: trainable_params(m) + goal.params)
    flearn = Learner(dls, split.trained, loss_func=goal.loss_func, opt_func=partial(OptimWrapper, opt=partial(torch.optim.AdamW, betas=ADAM_BETAS)),
                     metrics=goal.metrics, wd=cfg.head_wd, wd_bn_bias=True,
                     splitter=(lambda m: [params(m[0]), head(m)]) if body is not None else (lambda m: [head(m)]),
                     path=Path("."), model_dir=".", cbs=cbs)
    configure(flearn, cfg.precision)
    return flearn


def fit_features(flearn, cfg: ResolvedConfig, n: int, start_epoch: int, cbs: list) -> None:
    """fastai's one-cycle over the cached views: body stages at `body_lr`, the head at `lr`."""
    # slice(a, b) over two parameter groups is [a, b]; over the head alone, b
    flearn.fit_one_cycle(n, lr_max=slice(cfg.body_lr, cfg.lr), pct_start=PCT_START, div_final=DIV_FINAL,
                         start_epoch=start_epoch, cbs=cbs)
