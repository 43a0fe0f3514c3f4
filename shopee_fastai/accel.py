"""Hardware settings for training: numeric precision and memory layout, chosen for the device at hand.

- channels-last for convolutional networks on every device, fed plain tensors: the depthwise
  convolutions of EfficientNet run 1.7x faster in NHWC on CPU (bench/predict_speed.py, bench/train_speed.py)
  as they do on tensor-core GPUs.
- precision `auto`: mixed precision on CUDA (bfloat16 where the GPU has it, else float16 with loss
  scaling, through fastai's MixedPrecision); fp32 on CPU, where bf16 autocast is opt-in (`bf16`) and only
  on CPUs with native bf16 — see the README's training-speed table for what it gains and costs.
- denormal floats are left as PyTorch has them: flushing them to zero did not speed up `lr-find` on
  this CPU (bench/denormals.py: 6e-5 of the values were denormal at most; 0.96x, i.e. noise).
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from .infer import PRECISIONS, resolve_precision  # noqa: F401  (one definition for train and predict)



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

    Every operation on a TensorImage goes through fastai's Python `__torch_function__` (to keep the
    type), and an NCHW input makes the channels-last network convert layouts at its first layers:
    measured on 2 CPU cores (bench/train_speed.py), the forward pass of a training step took 1.5x the
    plain loop's until this ran. Losses and metrics work unchanged on plain tensors.
    """

    order = ChannelsLast.order + 1

    def before_batch(self):
        self.learn.xb = tuple(x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last) if x.ndim == 4
                              else x.as_subclass(torch.Tensor) for x in self.xb)
        self.learn.yb = tuple(y.as_subclass(torch.Tensor) for y in self.yb)


SPEED_CALLBACKS = (ChannelsLast, PlainInputs, MixedPrecision, CPUAutocast)


def configure(learn: Any, precision: str = "auto", channels_last: bool = True) -> str:
    """Set layout and precision on `learn` for its device; returns the precision used (for the model card)."""
    cuda = next(learn.model.parameters()).is_cuda or learn.dls.device.type == "cuda"
    used = resolve_precision(precision, cuda)
    if channels_last:
        learn.add_cbs([ChannelsLast(), PlainInputs()])
    if used in ("bf16", "fp16") and cuda:
        learn.to_bf16() if used == "bf16" else learn.to_fp16()
    elif used == "bf16":
        learn.add_cb(CPUAutocast())
    return used


def strip(learn: Any) -> None:
    """Remove the speed callbacks before export: the exported learner predicts in plain fp32 anywhere."""
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, SPEED_CALLBACKS)])
    learn.model.float().to(memory_format=torch.contiguous_format)
