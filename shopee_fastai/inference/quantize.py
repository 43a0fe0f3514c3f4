"""int8 graphs: ONNX Runtime's static quantisation of a model's ONNX graph, calibrated on its training photos.

QDQ format, uint8 activations and per-channel int8 weights: the layout that CPUs with VNNI multiply natively.
Weights use 7 of their 8 bits (`reduce_range`): a CPU without VNNI multiplies u8 x s8 pairs into 16-bit sums
that saturate at full range, which ONNX Runtime's quantisation notes name as the cause of large losses there.
Calibration feeds photos through the same decoding and batching as prediction, so the activation ranges
are those the graph meets. Post-training quantisation moves some top-1 predictions of EfficientNet-style
bodies (depthwise convolutions are sensitive), so int8 is opt-in: agreement and speed in docs/speed.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from ..artifacts import ONNX, ModelFiles
from ..config import INT8_PHOTOS
from ..errors import ShopeeError
from ..io import digest
from .backends import ONNX_INPUT, batches, onnx_session
from .export import with_config, write_onnx
from .load import onnx_config

CALIBRATION_BS = 32


def quantize(graph: Path, photos: Sequence[Path], dest: Path, source: dict[str, str] | None = None) -> Path:
    """Write `graph`'s int8 quantisation to `dest` atomically, calibrated on up to INT8_PHOTOS of `photos`."""
    # onnxruntime is optional: only an int8 graph needs its quantiser
    from onnxruntime.quantization import CalibrationDataReader

    cfg: dict[str, Any] = onnx_config(onnx_session(graph), graph)
    photos = list(photos)[:INT8_PHOTOS]
    if not photos:
        raise ShopeeError(f"{graph}: int8 calibration needs photos; pass a --data folder with readable training images")

    class Photos(CalibrationDataReader):
        read = 0

        def __init__(self):
            self.stream = (b.images for b in batches(photos, cfg["size"], CALIBRATION_BS, failures=[]))

        def get_next(self):
            images = next(self.stream, None)
            if images is None:
                return None
            Photos.read += len(images)
            return {ONNX_INPUT: images}

    try:
        return _quantize(graph, Photos, dest, cfg, source)
    except ShopeeError:
        raise
    except Exception as e:  # onnxruntime's own exception types
        if not Photos.read:
            raise ShopeeError(f"{graph}: none of the calibration photos could be read; pass a --data folder whose "
                              "training images open") from e
        raise ShopeeError(f"{graph}: int8 quantisation failed ({type(e).__name__}: {str(e)[:160]}); "
                          "predict with fp32 instead") from e


def _quantize(graph: Path, reader, dest: Path, cfg: dict[str, Any], source: dict[str, str] | None) -> Path:
    # onnxruntime is optional: only an int8 graph needs its quantiser
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        # the first convolution sees raw normalised pixels and costs the most agreement per op quantised
        quantize_static(str(pre), str(out), reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                        nodes_to_exclude=convs[:1])
        meta = {**cfg, "precision": "int8", "calibration_photos": reader.read, **({"source": source} if source else {})}
        return with_config(onnx.load(str(out)), meta, dest)


def write_graphs(model, cfg: dict[str, Any], dest: Path, sources: Sequence[Path], photos: Sequence[Path] | None,
                 timings: dict[str, float] | None = None) -> list[Path]:
    """A model's ONNX graphs: fp32 at `dest` and, given calibration `photos`, its int8 quantisation beside it.

    Each graph records the digests of `sources` (the model files it was made from), so `predict` on one of
    them takes the graph (no fastai, no torch) only while it still holds the same weights. Returns what was
    written; `timings` gets each graph's seconds ("onnx", "int8").
    """
    timings = {} if timings is None else timings
    source = {Path(p).suffix: digest(Path(p)) for p in sources if Path(p).is_file()}
    started = time.perf_counter()
    try:
        written = [write_onnx(model, cfg, dest, source)]
    except ShopeeError:
        raise
    except Exception as e:  # the exporter's own exception types: an arch it cannot trace
        raise ShopeeError(f"{dest}: ONNX export failed ({type(e).__name__}: {str(e)[:160]}); predict with the "
                          "model file itself (--backend torch)") from e
    timings["onnx"] = round(time.perf_counter() - started, 1)
    if photos is not None:
        started = time.perf_counter()
        written.append(quantize(dest, photos, ModelFiles.beside(dest).int8, {**source, ONNX: digest(dest)}))
        timings["int8"] = round(time.perf_counter() - started, 1)
    return written
