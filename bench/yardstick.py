"""The physical limit as a yardstick: this machine's matrix-product peak and a model's FLOPs per image.

Imported by the speed benches; run alone it prints the peak:

    python bench/yardstick.py
"""

from __future__ import annotations

import time

import torch

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


if __name__ == "__main__":
    print(f"{torch.get_num_threads()} threads: fp32 matmul {peak_gflops():.0f} GFLOP/s, "
          f"bf16 matmul {peak_gflops(torch.bfloat16):.0f} GFLOP/s")
