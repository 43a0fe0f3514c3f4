"""Where the default recipe's time goes, part by part, each way of running it side by side.

1. The frozen part (stem and lower stages of Lite0, eval mode) over a batch of 224-px images, as the cache
   runs it: eager PyTorch channels-last against ONNX Runtime, with their largest difference.
2. One training step of the trained part (last three stages, final 1x1 conv, fastai's head) on a batch of
   cached maps: fp32 against bf16 autocast, eager against `torch.compile`.

    python bench/recipe_speed.py            # ~2 minutes on 2 cores; --no-compile skips the compiled rows
"""

from __future__ import annotations

import argparse
import time

import torch
from fastai.vision.learner import create_timm_model

from shopee_fastai.config import OFFLINE_ARCH, TOP_STAGES
from shopee_fastai.inference.export import onnx_module
from shopee_fastai.nets.body import split_model
from shopee_fastai.training.features import HEAD_BS
from shopee_fastai.machine import summary


def per_image_ms(fn, bs: int, repeat: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat / bs * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    print(summary())
    torch.manual_seed(0)
    model = create_timm_model(OFFLINE_ARCH, 81, pretrained=False)[0]
    split = split_model(model, TOP_STAGES)

    frozen = split.frozen.eval()
    x = torch.randn(HEAD_BS, 3, args.size, args.size)
    eager = frozen.to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = eager(x.contiguous(memory_format=torch.channels_last))
        ort = onnx_module(frozen, torch.zeros(2, 3, args.size, args.size))
        diff = float((ort(x) - want).abs().max())
        rows = {"eager PyTorch, channels-last": per_image_ms(lambda: eager(x.contiguous(memory_format=torch.channels_last)), HEAD_BS),
                "ONNX Runtime": per_image_ms(lambda: ort(x), HEAD_BS)}
    base = rows["eager PyTorch, channels-last"]
    print(f"{OFFLINE_ARCH}, {args.size} px, batch {HEAD_BS}, {torch.get_num_threads()} threads\n")
    print("| frozen part, forward (the cache) | ms per image | × eager | max abs diff |")
    print("|---|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} | {base / ms:.2f} | {diff if name == 'ONNX Runtime' else 0:.1e} |")

    trained = split.trained.train().to(memory_format=torch.channels_last)
    for m in split.body.modules():  # as FrozenBatchNormStats runs them: ImageNet statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    maps = want[:HEAD_BS].contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 81, (HEAD_BS,))
    opt = torch.optim.AdamW(trained.parameters(), 1e-4)

    def step(net, bf16: bool):
        def run():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(net(maps).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return run

    ways = {"eager fp32": step(trained, False), "eager bf16 autocast": step(trained, True)}
    if not args.no_compile:
        compiled = torch.compile(trained)
        ways["torch.compile fp32"] = step(compiled, False)
    steps = {}
    for name, fn in ways.items():
        fn()  # compiles where it compiles
        steps[name] = per_image_ms(fn, HEAD_BS, repeat=4)
    base = steps["eager fp32"]
    print("\n| trained part, one training step | ms per image | × eager fp32 |")
    print("|---|---|---|")
    for name, ms in steps.items():
        print(f"| {name} | {ms:.2f} | {base / ms:.2f} |")


if __name__ == "__main__":
    main()
