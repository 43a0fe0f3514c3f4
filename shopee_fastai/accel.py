"""Hardware settings for training: numeric precision and memory layout, chosen for the device at hand.

- channels-last for convolutional networks on every device: the depthwise convolutions of EfficientNet
  run 2-3x faster in NHWC on CPU (bench/predict_speed.py) as they do on tensor-core GPUs.
- precision `auto`: mixed precision on CUDA (bfloat16 where the GPU has it, else float16 with loss
  scaling, through fastai's MixedPrecision); fp32 on CPU, where bf16 autocast is opt-in (`bf16`) and only
  on CPUs with native bf16 — see the README's training-speed table for what it gains and costs.
- denormal floats flushed to zero on CPU: tiny gradients late in training and at the low end of an
  lr-find sweep otherwise take a slow microcode path (bench/denormals.py).
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from .errors import ShopeeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, cuda: bool) -> str:
    """The precision `precision` means on this device (`auto` resolved), or a one-line error."""
    if precision not in PRECISIONS:
        raise ShopeeError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if not cuda and precision == "fp16":
        raise ShopeeError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
    if not cuda and precision == "bf16":
        from .infer import cpu_has_bf16

        if not cpu_has_bf16():
            raise ShopeeError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); use fp32")
    return precision


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


SPEED_CALLBACKS = (ChannelsLast, MixedPrecision, CPUAutocast)


def configure(learn: Any, precision: str = "auto", channels_last: bool = True) -> str:
    """Set layout and precision on `learn` for its device; returns the precision used (for the model card)."""
    cuda = next(learn.model.parameters()).is_cuda or learn.dls.device.type == "cuda"
    used = resolve_precision(precision, cuda)
    if not cuda:
        torch.set_flush_denormal(True)
    if channels_last:
        learn.add_cb(ChannelsLast())
    if used in ("bf16", "fp16") and cuda:
        learn.to_bf16() if used == "bf16" else learn.to_fp16()
    elif used == "bf16":
        learn.add_cb(CPUAutocast())
    return used


def strip(learn: Any) -> None:
    """Remove the speed callbacks before export: the exported learner predicts in plain fp32 anywhere."""
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, SPEED_CALLBACKS)])
    learn.model.float().to(memory_format=torch.contiguous_format)
