"""Batch inference end to end — decode, resize, forward, output — against a plain timm `model.eval()` loop.

The plain loop is what one writes first: decode each photo in turn (full decode, centre crop, bilinear
resize, normalise per image), stack a batch, fp32 NCHW forward, softmax. `predict`'s backends run the
same network on the same photos with the same preprocessing (the int8 row: its static quantisation);
the table gives photos/s, the ratio to the plain loop, top-1 agreement with the plain loop's fp32
predictions, and the share of the machine's matrix-product peak. A forward-only table (a fixed batch, no decoding) shows where the time goes.

    python bench/predict_speed.py --photos ../shared/data/grocery-store/train_images --n 500
    python bench/predict_speed.py --model models/x.pkl   # your own model (default: trains one on the sample)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shopee_fastai.artifacts import ModelFiles
from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.images import collect_images, crop_resize, load_rgb
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.device import cpu_has_bf16
from shopee_fastai.inference.backends import ONNX_INPUT
from shopee_fastai.inference.load import load_predictor

from yardstick import forward_gflops, fraction, peak_gflops  # bench/yardstick.py, beside this script
from shopee_fastai.machine import summary

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery-store" / "train_images"


def sample_model(models_dir: Path, arch: str) -> Path:
    """A real trained model (features recipe on the bundled sample), so agreement is measured on real outputs."""
    from shopee_fastai.config import TrainConfig
    from shopee_fastai.training import train

    card = train(TrainConfig(data=SAMPLE_DIR, arch=arch, pretrained=True, top_groups=0, split="random", models_dir=models_dir,
                         ensemble=1))  # one model: docs/speed.md's figures
    return ModelFiles.of(models_dir, card.name).pkl


def plain_loop(model, cfg: dict, files: list[Path], bs: int) -> np.ndarray:
    """The baseline: sequential full decoding, per-image normalisation, fp32 NCHW forward."""
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    out = []
    model.eval()
    with torch.no_grad():
        for b in range(0, len(files), bs):
            xs = []
            for f in files[b : b + bs]:
                im = crop_resize(load_rgb(f), cfg["size"])
                xs.append((torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 - mean) / std)
            out.append(model(torch.stack(xs)).softmax(1).numpy())
    return np.concatenate(out)


def timed(fn, n: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return n / (time.perf_counter() - start), result


def forward_only(model, cfg: dict, bs: int, session) -> dict[str, float]:
    """Images/s of the network alone on one fixed batch, for each way of running it."""
    import copy

    size = cfg["size"]
    x = torch.randn(bs, 3, size, size)
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    u8 = np.random.default_rng(0).integers(0, 255, (bs, size, size, 3), dtype=np.uint8)
    ways = {
        "fp32 NCHW (plain)": lambda: model(x),
        "fp32 channels-last": lambda: cl(x.contiguous(memory_format=torch.channels_last)),
        "bf16 autocast channels-last": lambda: _bf16(cl, x.contiguous(memory_format=torch.channels_last)),
        "ONNX Runtime fp32": lambda: session.run(None, {ONNX_INPUT: u8}),
    }
    if not cpu_has_bf16():
        ways.pop("bf16 autocast channels-last")
    rates = {}
    with torch.inference_mode():
        for name, fn in ways.items():
            fn()
            rates[name] = max(timed(fn, bs)[0] for _ in range(3))
    return rates


def _bf16(model, x):
    with torch.autocast("cpu", torch.bfloat16):
        return model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=GROCERY if GROCERY.is_dir() else SAMPLE_DIR / "train_images")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--model", type=Path, help="an exported .pkl (default: train Lite0 on the bundled sample)")
    ap.add_argument("--arch", default=OFFLINE_ARCH)
    args = ap.parse_args()
    print(summary())

    files = collect_images([args.photos])[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = args.model or sample_model(Path(tmp), args.arch)
        learner = load_predictor(model_file, backend="fastai")
        from shopee_fastai.inference.export import learner_config

        cfg = learner_config(learner.learn)
        net = learner.learn.model.eval()
        print(f"{len(files)} photos from {args.photos}, batch {args.bs}, {cfg['size']} px, {cfg['arch']}, "
              f"{torch.get_num_threads()} threads, bf16 native: {cpu_has_bf16()}")

        plain_rate, plain = timed(lambda: plain_loop(net, cfg, files, args.bs), len(files))
        rows = [("plain timm loop (fp32, sequential decode)", plain_rate, plain)]
        start = time.perf_counter()
        load_predictor(model_file, backend="onnx")
        export_s = time.perf_counter() - start
        for label, backend, precision in (("predict --backend fastai", "fastai", "fp32"),
                                          ("predict --backend torch", "torch", "fp32"),
                                          ("predict --backend torch --precision bf16", "torch", "bf16"),
                                          ("predict --backend onnx (auto)", "onnx", "fp32"),
                                          ("predict --precision int8 (ONNX Runtime, QDQ)", "auto", "int8")):
            if precision == "bf16" and not cpu_has_bf16():
                continue
            if precision == "int8" and not ModelFiles.beside(model_file).int8.is_file():
                print("(no int8 graph beside the model: `shopee-fastai export-onnx --model M --int8 --data DIR` writes one)")
                continue
            p = load_predictor(model_file, backend=backend, precision=precision)
            p.outputs(files[: args.bs], bs=args.bs, progress=False)  # warm-up
            rate, preds = timed(lambda: p.outputs(files, bs=args.bs, progress=False), len(files))
            rows.append((label, rate, preds.outputs))
        onnx_session = load_predictor(model_file, backend="onnx").backend.session

        peak = peak_gflops()
        flops = forward_gflops(net, cfg["size"])
        print(f"\nyardstick: fp32 matmul peak {peak:.0f} GFLOP/s; forward {flops:.2f} GFLOP per image; "
              f"ONNX export + cache on first use {export_s:.1f} s\n")
        print(f"| end to end ({len(files)} photos) | photos/s | × plain | top-1 agreement with plain fp32 | max prob diff | share of fp32 peak |")
        print("|---|---|---|---|---|---|")
        for label, rate, probs in rows:
            agree = float((probs.argmax(1) == plain.argmax(1)).mean())
            print(f"| {label} | {rate:.1f} | {rate / plain_rate:.2f} | {100 * agree:.1f} % | "
                  f"{np.abs(probs - plain).max():.4f} | {fraction(rate, flops, peak)} |")
        rates = forward_only(net, cfg, args.bs, onnx_session)
        base = rates["fp32 NCHW (plain)"]
        print(f"\n| forward only (batch {args.bs}) | images/s | × plain | share of fp32 peak |")
        print("|---|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.1f} | {rate / base:.2f} | {fraction(rate, flops, peak)} |")


if __name__ == "__main__":
    main()
