"""fastai callbacks that every training phase shares: layout and precision, checkpoints, frozen BatchNorm statistics.

They run inside fastai's one training loop, so the default recipe's phase over cached feature maps and
fastai's own frozen/unfrozen phases checkpoint, resume, stop early and keep their best epoch alike.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.schedule import ParamScheduler
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from torch import nn

from ..artifacts import ModelFiles
from ..config import GUARD_EVERY, GUARD_FLOOR, GUARD_RISE, GUARD_WARMUP, Precision, ResolvedConfig, option
from ..device import resolve_precision, world
from ..errors import ShopeeError
from ..io import atomic_path, write_json

F1_METRIC = "match_f1"  # an embedding's validation metric


class CPUAutocast(Callback):
    """bf16 autocast around forward and loss on CPU (fastai's MixedPrecision is CUDA-only)."""

    order = MixedPrecision.order

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_loss(self):
        self.ctx.__exit__(None, None, None)
        self.ctx = None

    def after_cancel_batch(self):
        if getattr(self, "ctx", None) is not None:
            self.after_loss()


class PlainInputs(Callback):
    """Hand the model plain channels-last tensors instead of fastai's TensorImage.

    Every operation on a TensorImage goes through fastai's Python `__torch_function__`, and an NCHW input
    makes a channels-last network convert layouts at its first layer: together 1.5x a training step's
    forward on CPU (docs/speed.md). Losses and metrics work unchanged on plain tensors.
    """

    order = ChannelsLast.order + 1

    def before_batch(self):
        self.learn.xb = tuple(x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last) if x.ndim == 4
                              else x.as_subclass(torch.Tensor) for x in self.xb)
        self.learn.yb = tuple(y.as_subclass(torch.Tensor) for y in self.yb)


SPEED_CALLBACKS = (ChannelsLast, PlainInputs, MixedPrecision, CPUAutocast)


def configure(learn: Any, precision: str = Precision.auto, channels_last: bool = True) -> Precision:
    """Set layout and precision on `learn` for its device; returns the precision used (for the model card)."""
    cuda = next(learn.model.parameters()).is_cuda or learn.dls.device.type == "cuda"
    used = resolve_precision(precision, cuda)
    if channels_last:
        learn.add_cbs([ChannelsLast(), PlainInputs()])
    if used in (Precision.bf16, Precision.fp16) and cuda:
        learn.to_bf16() if used == Precision.bf16 else learn.to_fp16()
    elif used == Precision.bf16:
        learn.add_cb(CPUAutocast())
    return used


def strip(learn: Any) -> None:
    """Remove the speed callbacks before export: the exported learner predicts in plain fp32 anywhere."""
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, SPEED_CALLBACKS)])
    learn.model.float().to(memory_format=torch.contiguous_format)


class FrozenBatchNormStats(Callback):
    """Keep the running statistics of `module`'s BatchNorm layers (ImageNet's) while their weights train.

    fastai puts the whole model in train mode before each training epoch; this runs after it.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def before_train(self):
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class EpochTimer(Callback):
    """Each epoch's wall seconds (training and validation), for the card's history: what a user compares across
    machines."""

    order = 55  # after the Recorder (50), before a Checkpoint (65) writes the history

    def before_fit(self):
        self.learn.epoch_seconds = {}

    def before_epoch(self):
        self.started = time.perf_counter()

    def after_epoch(self):
        self.learn.epoch_seconds[self.epoch] = round(time.perf_counter() - self.started, 2)


class DivergenceGuard(Callback):
    """No run blows up silently: when the running training loss turns non-finite or rises to `rise` times its
    lowest value (or `rise` times `floor`, for losses near 0, whose wobbles are not divergence), the last good
    weights and optimizer state come back and the learning rate is halved for the rest of the phase. Each
    recovery is warned about and counted in the epoch's history.

    A high peak of the one-cycle schedule can throw a run off (the body's BatchNorm keeps ImageNet statistics,
    so nothing pulls drifting activations back); halving from there is what a person would do by hand."""

    order = ParamScheduler.order + 1  # after the scheduler has set this batch's rates

    def __init__(self, rise: float = GUARD_RISE, floor: float = GUARD_FLOOR, warmup: int = GUARD_WARMUP,
                 every: int = GUARD_EVERY, beta: float = 0.9):
        self.rise, self.floor, self.warmup, self.every, self.beta = rise, floor, warmup, every, beta
        self.recoveries: dict[int, int] = {}  # epoch -> recoveries, for the history (one guard per phase)

    def before_fit(self):  # fastai's validate() calls this too; it trains nothing, so a fresh start costs nothing
        self.scale, self.mean, self.lowest, self.steps = 1.0, 0.0, math.inf, 0
        self.learn.recoveries = self.recoveries
        self._snapshot()  # the weights a phase starts from are good by definition

    def before_batch(self):
        if self.training and self.scale != 1.0:
            self.opt.set_hyper("lr", [h["lr"] * self.scale for h in self.opt.hypers])

    def after_loss(self):
        if not self.training:
            return
        loss = float(self.learn.loss.detach().float())
        self.steps += 1
        self.mean = self.beta * self.mean + (1 - self.beta) * loss
        smooth = self.mean / (1 - self.beta ** self.steps)
        if not math.isfinite(smooth):
            self._recover(f"a non-finite loss ({loss})")
        if self.steps >= self.warmup and smooth > self.rise * max(self.lowest, self.floor):
            self._recover(f"the running training loss rose from {self.lowest:.3g} to {smooth:.3g}")
        self.lowest = min(self.lowest, smooth)
        if self.steps % self.every == 0 and smooth <= (1 + (self.rise - 1) / 4) * self.lowest:
            self._snapshot()

    def _snapshot(self):
        self.good = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), self.mean, self.steps)

    def _recover(self, why: str):
        model, opt, self.mean, self.steps = self.good
        self.model.load_state_dict(model)
        self.opt.load_state_dict(copy.deepcopy(opt))
        self.scale /= 2
        self.recoveries[self.epoch] = self.recoveries.get(self.epoch, 0) + 1
        warnings.warn(f"training diverged in epoch {self.epoch} ({why}): restored the last good weights and halved the "
                      f"learning rate (now x{self.scale:g} of the schedule)")
        raise CancelBatchException  # no step on this batch


def history(learn, phase: str, start: int = 0) -> list[dict[str, Any]]:
    """Per-epoch rows of the Recorder for `phase` from epoch `start` (fastai records skipped epochs as empty rows),
    with the epoch's seconds and any recoveries of the DivergenceGuard."""
    names = learn.recorder.metric_names[1:-1]
    rows = learn.recorder.values[start:]
    seconds = getattr(learn, "epoch_seconds", {})
    recoveries = getattr(learn, "recoveries", {})
    return [{"phase": phase, "epoch": start + i, **{n: float(v) for n, v in zip(names, row)},
             **({"seconds": seconds[start + i]} if start + i in seconds else {}),
             **({"recoveries": recoveries[start + i]} if start + i in recoveries else {})} for i, row in enumerate(rows)]


class ValidLoss(Callback):
    """Validate with another loss than training's: plain cross-entropy beside label smoothing (so valid losses
    compare across phases), or a pair loss for an embedding whose validation groups have no class centres."""

    def __init__(self, loss):
        self.loss = loss

    def before_validate(self):
        self.train_loss, self.learn.loss_func = self.learn.loss_func, self.loss

    def after_validate(self):
        self.learn.loss_func = self.train_loss


class Checkpoint(Callback):
    """After every `every`-th epoch of a phase (and its last), save the weights of `model` (the whole network,
    also when the phase trains a part of it) with the optimizer state, then the progress, each atomically."""

    order = 65  # after the Recorder (50) has logged the epoch

    def __init__(self, files: ModelFiles, model: nn.Module, phase: str, every: int, before: list[dict], start: int = 0,
                 options: dict[str, Any] | None = None):
        self.files, self.model, self.phase, self.every, self.before, self.start = files, model, phase, every, before, start
        self.options = options or {}

    def after_epoch(self) -> None:
        done = self.epoch + 1
        if self.epoch < self.start or (done % self.every and done != self.n_epoch):
            return  # an epoch skipped on resume, or not a checkpoint epoch
        if world()[0]:
            return  # one writer under data-parallel training
        state = {"model": self.model.state_dict(), "opt": self.learn.opt.state_dict(), "rng": _rng_state(self.learn)}
        if _has_params(self.learn.loss_func):  # a margin loss's class centres
            state["loss"] = self.learn.loss_func.state_dict()
        with atomic_path(self.files.checkpoint) as tmp:
            torch.save(state, tmp)
        now = history(self.learn, self.phase, self.start)
        write_json(self.files.progress, {"phase": self.phase, "epochs_done": done, "history": self.before + now,
                                         "options": self.options})


def read_progress(files: ModelFiles, options: dict[str, Any]) -> dict[str, Any]:
    """The saved progress of an interrupted run (phase, epochs done, history so far), if it ran with `options`."""
    if not (files.checkpoint.is_file() and files.progress.is_file()):
        raise ShopeeError(f"{files.checkpoint}: no checkpoint to resume from; train with --checkpoint-every N first (same --name)")
    try:
        saved = json.loads(files.progress.read_text())
    except (OSError, ValueError) as e:
        raise ShopeeError(f"{files.progress}: unreadable ({e}); train afresh without --resume") from e
    changed = [k for k in sorted(set(saved.get("options", {})) | set(options))
               if saved.get("options", {}).get(k) != options.get(k)]
    if changed:
        was = saved.get("options", {})
        diff = ", ".join(f"{option(k)} was {was.get(k)!r}, now {options.get(k)!r}" for k in changed[:3])
        raise ShopeeError(f"--resume: {diff}; resume with the options the run was started with, or train afresh without --resume")
    return saved


def load_checkpoint(files: ModelFiles, model: nn.Module, learn=None) -> None:
    """Put the saved weights into `model` and, given the phase's `learn`, the optimizer state into its optimizer."""
    try:
        if learn is not None and learn.opt is None:
            learn.create_opt()
        # our own file, holding fastai optimizer state (not plain tensors); the optimizer state must sit where the gradients are
        state = torch.load(files.checkpoint, map_location=next(model.parameters()).device, weights_only=False)
        model.load_state_dict(state["model"])
        if learn is not None:
            learn.opt.load_state_dict(state["opt"])
            if "loss" in state:
                learn.loss_func.load_state_dict(state["loss"])
            if "rng" in state:
                _set_rng_state(learn, state["rng"])
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise ShopeeError(f"{files.checkpoint}: checkpoint unreadable or from other options ({str(e).splitlines()[0][:120]}); "
                          "resume with the options it was trained with, or train afresh") from e


def _rng_state(learn) -> dict[str, Any]:
    """Every random state the next epochs draw from (the training loader's shuffle, dropout, augmentation), so a
    resumed run goes on exactly as the uninterrupted one would have."""
    shuffle = getattr(learn.dls.train, "rng", None)
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "shuffle": shuffle.getstate() if shuffle is not None else None}


def _set_rng_state(learn, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["shuffle"] is not None and getattr(learn.dls.train, "rng", None) is not None:
        learn.dls.train.rng.setstate(state["shuffle"])


def _has_params(module) -> bool:
    return isinstance(module, nn.Module) and any(True for _ in module.parameters())


def remove_checkpoint(files: ModelFiles) -> None:
    for p in (files.checkpoint, files.progress, Path(f"{files.best}.pth")):
        p.unlink(missing_ok=True)


def stopping_callbacks(cfg: ResolvedConfig, files: ModelFiles, start: int = 0) -> list:
    """fastai's EarlyStoppingCallback and SaveModelCallback (best epoch by valid loss, or matching F1 for an
    embedding, reloaded at the phase's end),
    blind to the epochs a resumed phase skips (fastai records those as empty rows)."""
    def from_start(cls):
        class FromStart(cls):
            def after_epoch(self):
                if self.epoch >= start:
                    super().after_epoch()

        FromStart.__name__ = FromStart.__qualname__ = cls.__name__  # fastai names callbacks after their class
        return FromStart

    # an embedding's valid loss is a pair loss; what it is for is matching
    watch = dict(monitor=F1_METRIC, comp=np.greater) if cfg.loss.is_embedding else dict(monitor="valid_loss")
    cbs: list = []
    if cfg.early_stop:
        cbs.append(from_start(EarlyStoppingCallback)(patience=cfg.early_stop, **watch))
    if cfg.keep_best:
        cbs.append(from_start(SaveModelCallback)(fname=str(files.best), with_opt=False, **watch))
    return cbs
