"""Fast batch inference: parallel decoding into uint8 batches, and a backend that runs the network on them.

The plain loop decodes one photo at a time, normalises on the Python side and runs an fp32 NCHW forward.
Here decoding runs in a thread pool while the network works (Pillow releases the GIL), JPEGs are decoded
at reduced scale when far larger than the input (`draft`), batches stay uint8 until the backend, and the
backend is the fastest faithful one available:

- `onnx`: ONNX Runtime on a graph that takes uint8 NHWC images and returns probabilities (scaling and
  normalisation are inside the graph). Graphs are exported once per model file and cached, and an `.onnx`
  file can be used directly, so later runs load neither fastai nor torch.
- `torch`: the PyTorch module in channels-last layout (NHWC is what the uint8 batch already is), with
  bfloat16 autocast on CUDA and on CPUs with native bf16 (opt-in: `--precision bf16`).
- `fastai`: the exported learner's own `get_preds` (the reference path; TTA runs there).

Preprocessing is fastai's validation pipeline (centre crop of the largest square, bilinear resize,
scale, normalise), so every backend gives the learner's predictions up to floating-point rounding.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import ShopeeError
from .images import load_rgb

BACKENDS = ("auto", "onnx", "torch", "fastai")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 (else fp16) autocast on CUDA, fp32 on CPU
ONNX_SUFFIX = ".onnx"
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"
DECODE_THREADS = max(2, os.cpu_count() or 2)  # decoding releases the GIL; a few threads keep the network fed
CHUNK = 256  # images decoded ahead at most: bounds memory however many are asked for
DEFAULT_BS = 32


def crop_resize(im: Image.Image, size: int) -> Image.Image:
    """fastai's validation `Resize(size)`: the centred largest square, resized bilinearly to size x size."""
    w, h = im.size
    side = int(min(w, h) / size * size)
    left, top = int(0.5 * (w - side)), int(0.5 * (h - side))
    # crop, then resize: resizing with `box=` would also filter in pixels from outside the square
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def decode(path: str | Path, size: int, draft: bool = True) -> np.ndarray:
    """One photo as a uint8 [size, size, 3] array (HWC, what Pillow gives without a copy)."""
    return np.asarray(crop_resize(load_rgb(path, draft_size=size if draft else None), size))


@dataclass
class Batch:
    paths: list[Path]
    images: np.ndarray  # uint8 [n, size, size, 3]


def batches(paths: Sequence[Path], size: int, bs: int = DEFAULT_BS, draft: bool = True,
            threads: int = DECODE_THREADS, failures: list[str] | None = None) -> Iterator[Batch]:
    """Decoded batches in input order, decoding ahead in threads (at most CHUNK images held); bad files go to `failures`."""
    from .cache import use_cache

    sources = use_cache(map(str, paths), size)[0]  # the prepared cache where it serves this size

    def one(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, decode(sources[i], size, draft), None
        except ShopeeError as e:
            return i, None, str(e)

    pending: list[tuple[Path, np.ndarray]] = []
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(paths), CHUNK):
            for i, im, err in pool.map(one, range(start, min(start + CHUNK, len(paths)))):
                if err:
                    if failures is not None:
                        failures.append(err)
                    continue
                pending.append((Path(paths[i]), im))
                if len(pending) == bs:
                    yield Batch([p for p, _ in pending], np.stack([x for _, x in pending]))
                    pending = []
    if pending:
        yield Batch([p for p, _ in pending], np.stack([x for _, x in pending]))


def normalised(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 NHWC (numpy or torch) -> float NCHW tensor in channels-last memory (a view, no transpose copy)."""
    import torch

    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def packaged(model, mean: Sequence[float], std: Sequence[float]):
    """The exportable module: uint8 NHWC images in, probabilities out (scaling and normalisation inside the graph)."""
    import torch
    from torch import nn

    class Packaged(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

        def forward(self, images):
            return self.model((images.permute(0, 3, 1, 2).float() - self.mean) / self.std).softmax(1)

    return Packaged().eval()


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix units (AVX512-BF16 / AMX): without them bf16 autocast is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, cuda: bool) -> str:
    """What `precision` means on this device (`auto` resolved), or a one-line error (training and predicting)."""
    import torch

    if precision not in PRECISIONS:
        raise ShopeeError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if not cuda and precision == "fp16":
        raise ShopeeError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
    if not cuda and precision == "bf16" and not cpu_has_bf16():
        raise ShopeeError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); use fp32")
    return precision


def gpu_present() -> bool:
    """A usable CUDA GPU; looks for the driver's device node first, so CPU-only runs never pay for importing torch."""
    if not Path("/dev/nvidiactl").exists():
        return False
    import torch

    return torch.cuda.is_available()


@dataclass
class TorchBackend:
    model: Any
    cfg: dict[str, Any]
    precision: str = "auto"
    name: str = "torch"

    def __post_init__(self) -> None:
        import torch

        self.device = next(self.model.parameters()).device
        self.model = self.model.eval().to(memory_format=torch.channels_last)
        self.precision = resolve_precision(self.precision, self.device.type == "cuda")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = normalised(torch.from_numpy(images).to(self.device, non_blocking=True), self.cfg["mean"], self.cfg["std"])
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None):
            return self.model(x).float().softmax(1).cpu().numpy()


@dataclass
class OnnxBackend:
    session: Any
    name: str = "onnx"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(images)})[0]


def onnx_session(model: bytes | Path):
    """An ONNX Runtime CPU (or CUDA, when present) session with one thread per core."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ShopeeError("--backend onnx needs onnxruntime; run `pip install onnxruntime` or use --backend torch") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count() or 1
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        where = f"{model}: " if isinstance(model, Path) else ""
        raise ShopeeError(f"{where}not a readable ONNX model ({str(e).splitlines()[0][:160]}); re-export it with `shopee-fastai export-onnx`") from e


def onnx_bytes(model, cfg: dict[str, Any]) -> bytes:
    """The packaged model as an ONNX graph (dynamic batch), with `cfg` as JSON in the graph's metadata."""
    import io
    import warnings

    import onnx
    import torch

    from .safe import META_KEY

    module = packaged(model.cpu().float(), cfg["mean"], cfg["std"])
    example = torch.zeros(2, cfg["size"], cfg["size"], 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(graph, {META_KEY: json.dumps(cfg)})
    return graph.SerializeToString()


def onnx_config(session, where: Path | str) -> dict[str, Any]:
    from .safe import parse_config

    return parse_config(session.get_modelmeta().custom_metadata_map, f"{where}: an ONNX model",
                        "export it with `shopee-fastai export-onnx`")


def export_onnx(model, cfg: dict[str, Any], dest: Path) -> Path:
    """Write the packaged model to `dest` atomically; it predicts without fastai or torch."""
    from .io import atomic_path

    data = onnx_bytes(model, cfg)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def cached_onnx(model_file: Path, build: Callable[[], tuple[Any, dict[str, Any]]]) -> Path:
    """The ONNX graph for `model_file`, exported on first use and cached by the file's identity."""
    from .cache import file_key
    from .weights import cache_dir

    dest = cache_dir() / "onnx" / f"{Path(model_file).stem}-{file_key(Path(model_file))}{ONNX_SUFFIX}"
    if not dest.is_file():
        export_onnx(*build(), dest)
    return dest


@dataclass
class FastModel:
    """A model behind a backend, with the same members as `predict.LearnerModel`: `vocab` and `probs`."""

    backend: Any  # TorchBackend | OnnxBackend
    cfg: dict[str, Any]
    draft: bool = True

    @property
    def vocab(self) -> list[str]:
        return list(self.cfg["classes"])

    def probs(self, images: Sequence[Path], bs: int = DEFAULT_BS, progress: bool = True):
        """Probabilities for the readable images, in input order; unreadable ones are listed, not fatal."""
        from fastprogress.fastprogress import progress_bar

        from .predict import Predictions

        failures: list[str] = []
        stream = batches(images, self.cfg["size"], bs, self.draft, failures=failures)
        n_batches = -(-len(images) // bs)
        done, out = [], []
        # fastprogress prints a stray bar even with display=False, so only wrap when showing one
        for batch in progress_bar(stream, total=n_batches) if progress and n_batches > 1 else stream:
            out.append(self.backend(batch.images))
            done += batch.paths
        probs = np.concatenate(out) if out else np.zeros((0, len(self.vocab)), np.float32)
        return Predictions(done, probs, failures)


def onnx_model(path: Path) -> FastModel:
    """An `.onnx` export behind ONNX Runtime, with the config from its metadata."""
    session = onnx_session(path)
    return FastModel(OnnxBackend(session), onnx_config(session, path))
