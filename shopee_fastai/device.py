"""The device at hand: which precision it runs, whether a GPU is there, and the data-parallel world.

Precision `auto` is mixed precision on CUDA (bf16 where the GPU has it, else fp16 with loss scaling) and
fp32 on CPU, where bf16 autocast is opt-in and needs native bf16 (docs/speed.md). The fastai callbacks
that apply it to a learner live in training/callbacks.py. Nothing here imports torch at import time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from .config import CHECKSUM_ENV, Precision
from .errors import ShopeeError


def gpu_present() -> bool:
    """A usable CUDA GPU; looks for the driver's device node first, so CPU-only runs never pay for importing torch."""
    if not Path("/dev/nvidiactl").exists():
        return False
    import torch  # ~2 s, paid only where a GPU driver is present

    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix units (AVX512-BF16 / AMX): without them bf16 autocast is slower than fp32."""
    import torch  # ~2 s; this module stays torch-free at import for the ONNX predict path

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, cuda: bool) -> Precision:
    """What `precision` means on this device (`auto` resolved), or a one-line error."""
    import torch  # ~2 s; this module stays torch-free at import for the ONNX predict path

    precision = Precision.parse(precision, "--precision")
    if precision == Precision.auto:
        return (Precision.bf16 if torch.cuda.is_bf16_supported() else Precision.fp16) if cuda else Precision.fp32
    if precision == Precision.int8:
        raise ShopeeError("--precision int8 runs the model's quantised ONNX graph; use --backend auto or onnx")
    if not cuda and precision == Precision.fp16:
        raise ShopeeError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
    if not cuda and precision == Precision.bf16 and not cpu_has_bf16():
        raise ShopeeError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); use fp32")
    return precision


def world() -> tuple[int, int]:
    """(rank, number of processes) under `accelerate launch`/torchrun; (0, 1) otherwise."""
    from fastai.torch_core import num_distrib, rank_distrib  # fastai stays out of this module's import (test_layers)

    return rank_distrib(), max(1, num_distrib())


@contextlib.contextmanager
def distributed(learn):
    """Data-parallel training through fastai's Accelerate integration when launched on several processes."""
    rank, n = world()
    if n == 1:
        yield
        return
    import fastai.distributed  # data-parallel runs only; fastai stays out of this module's import (test_layers)
    import torch  # ~2 s; this module stays torch-free at import for the ONNX predict path

    def broadcast(self, t, src):  # fastai's moves this to CUDA, which gloo on a CPU-only machine cannot take
        t = torch.LongTensor(t).to("cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.broadcast(t, src)
        return t.cpu().tolist()

    fastai.distributed.DistributedDL._broadcast = broadcast

    with learn.distrib_ctx(sync_bn=False, cpu=not torch.cuda.is_available()):  # gloo on CPU-only machines
        yield
    if os.environ.get(CHECKSUM_ENV) == "1":
        total = sum(float(p.detach().double().sum()) for p in learn.model.parameters())
        # Equal on every rank when gradients were synchronised. One write of its own, newline included (print
        # writes the end separately), is atomic on a pipe, so the other rank's output cannot cut the line.
        sys.stdout.flush()
        sys.stdout.write(f"rank {rank}/{n}: weights checksum {total:.10e}\n")
        sys.stdout.flush()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave_world() -> None:
    """Close the process group Accelerate started (scoring still gathers through it): a rank that exits with gloo's
    threads alive can abort."""
    import torch.distributed as dist  # ~2 s; this module stays torch-free at import for the ONNX predict path

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
