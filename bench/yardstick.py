"""The physical limit as a yardstick: this machine's matrix-product peak and a model's FLOPs per image.

Imported by the speed benches; run alone it prints the peak:

    python bench/yardstick.py
"""

from __future__ import annotations

import argparse
import time

import torch

from shopee_fastai.device import cpu_has_bf16
from shopee_fastai.machine import summary

MATMUL_N = 4096


def peak_gflops(dtype: torch.dtype = torch.float32, n: int = MATMUL_N, repeat: int = 5) -> float:
    """Best of `repeat` large square matrix products, in GFLOP/s (2 n^3 flops each): what the cores can do."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_gflops(model: torch.nn.Module, size: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass of one `size` x `size` image, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def fraction(rate: float, gflop_per_item: float, peak: float) -> str:
    """`rate` items/s as a share of the peak, e.g. '7.1 %'."""
    return f"{100 * rate * gflop_per_item / peak:.1f} %"


def peak_line(n: int = MATMUL_N) -> str:
    """fp32 peak on all threads and on one (two threads on the two hardware threads of one core scale far less
    than on two cores), and bf16's where the CPU has native bf16: without it a bf16 product is emulated,
    minutes long."""
    threads = torch.get_num_threads()
    bf16 = (f"bf16 matmul {peak_gflops(torch.bfloat16, n):.0f} GFLOP/s" if cpu_has_bf16() else
            "bf16 not timed (no native bf16 on this CPU)")
    full = peak_gflops(n=n)
    torch.set_num_threads(1)
    try:
        one = peak_gflops(n=n)
    finally:
        torch.set_num_threads(threads)
    return (f"{threads} threads: fp32 matmul {full:.0f} GFLOP/s ({full / one:.2f}× one thread's {one:.0f}), {bf16}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=MATMUL_N, help="Matrix side.")
    print(summary())
    print(peak_line(ap.parse_args().n))
