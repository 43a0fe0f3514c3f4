"""Which parts of the network post-training int8 quantisation can take: top-1 agreement with the fp32 graph
for each variant (calibration method, activation type, which convolutions stay fp32).

    python bench/int8_variants.py --model models/x.onnx --split models/x.split.csv --data ../shared/data/grocery-store \
        minmax percentile entropy s8s8 reduce no-stem no-stem-dw gemm-only no-stem-reduce no-stem-u8u8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from shopee_fastai.data.table import ID, LABEL, PATH, read_table
from shopee_fastai.inference.backends import ONNX_INPUT, FastPredictor, OnnxBackend, batches, onnx_session
from shopee_fastai.inference.load import onnx_config
from shopee_fastai.machine import summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="the fp32 .onnx `train` wrote")
    ap.add_argument("--split", type=Path, required=True, help="its .split.csv (calibration: training rows)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", default="^val_", help="posting_id regex of the photos compared")
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()
    print(summary())

    session = onnx_session(args.model)
    cfg = onnx_config(session, args.model)
    table = read_table(args.data)
    split = pd.read_csv(args.split)
    calib = table[table[ID].isin(split[split.split == "train"][ID])][PATH].sample(frac=1, random_state=42).tolist()[:256]
    rows = table[table[ID].astype(str).str.contains(args.rows) & table[LABEL].astype(str).isin(cfg["classes"])]
    photos = [Path(p) for p in rows[PATH]]
    ref = FastPredictor(OnnxBackend(session), cfg).outputs(photos, progress=False).outputs

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.stream = (b.images for b in batches(calib, cfg["size"], 32, failures=[]))

        def get_next(self):
            x = next(self.stream, None)
            return None if x is None else {ONNX_INPUT: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = str(Path(tmp) / "pre.onnx")
        quant_pre_process(str(args.model), pre, skip_symbolic_shape=True)
        convs = [n for n in onnx.load(pre).graph.node if n.op_type == "Conv"]
        depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        base = dict(calibrate_method=CalibrationMethod.MinMax, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul"])
        variants = {
            "minmax": {}, "percentile": dict(calibrate_method=CalibrationMethod.Percentile),
            "entropy": dict(calibrate_method=CalibrationMethod.Entropy), "s8s8": dict(activation_type=QuantType.QInt8),
            "reduce": dict(reduce_range=True), "no-stem": dict(nodes_to_exclude=[convs[0].name]),
            "no-stem-dw": dict(nodes_to_exclude=[convs[0].name, *depthwise]),
            "gemm-only": dict(op_types_to_quantize=["Gemm", "MatMul"]),
            # AVX2 without VNNI multiplies u8 x s8 in 16-bit sums that can saturate; these two cannot
            "no-stem-reduce": dict(nodes_to_exclude=[convs[0].name], reduce_range=True),
            "no-stem-u8u8": dict(nodes_to_exclude=[convs[0].name], weight_type=QuantType.QUInt8),
        }
        print(f"{len(photos)} photos; {len(convs)} convolutions, {len(depthwise)} depthwise\n")
        print("| variant | top-1 agreement with fp32 | max prob diff | quantising (s) |")
        print("|---|---|---|---|")
        for name in args.variants:
            out = str(Path(tmp) / f"{name}.onnx")
            start = time.perf_counter()
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            **{**base, **variants[name]})
            took = time.perf_counter() - start
            got = FastPredictor(OnnxBackend(onnx_session(Path(out))), cfg).outputs(photos, progress=False).outputs
            agree = float((got.argmax(1) == ref.argmax(1)).mean())
            print(f"| {name} | {100 * agree:.1f} % | {np.abs(got - ref).max():.3f} | {took:.0f} |", flush=True)


if __name__ == "__main__":
    main()
