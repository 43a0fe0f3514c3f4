"""Backends behind the one predictor interface (inference/predictions.py).

- `LearnerPredictor`: the exported fastai learner's own `get_preds` (the reference path; TTA runs here).
- `FastPredictor` with `OnnxBackend`: ONNX Runtime on a graph that takes uint8 NHWC images and returns
  probabilities (scaling and normalisation inside the graph), exported once per model file and cached, so
  later runs load neither fastai nor torch. With `TorchBackend`: the PyTorch module channels-last, bf16
  autocast on CUDA and, opt-in, on CPUs with native bf16.

Photos are decoded in threads while the network works (`data.images.decode_chunks`), JPEGs at reduced
scale when far larger than the input, and batches stay uint8 until the backend. Preprocessing is fastai's
validation pipeline, so every backend gives the learner's predictions up to floating-point rounding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..config import EMBEDDING, PREDICT_BS, PROBS
from ..data.cache import use_cache
from ..data.images import decode, decode_chunks, load_rgb
from ..device import resolve_precision
from ..errors import ShopeeError
from ..machine import threads
from .predictions import Predictions

ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"


@dataclass
class Batch:
    paths: list[Path]
    images: np.ndarray  # uint8 [n, size, size, 3]


def batches(paths: Sequence[Path], size: int, bs: int = PREDICT_BS, draft: bool = True,
            failures: list[str] | None = None) -> Iterator[Batch]:
    """Decoded batches in input order, from the prepared cache where it serves this size; bad files go to `failures`."""
    sources = use_cache(map(str, paths), size)[0]
    pending: list[tuple[Path, np.ndarray]] = []
    for part in decode_chunks(sources, partial(decode, size=size, draft=draft)):
        for i, im, err in part:
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


def learner_batches(learn, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True) -> Iterator[tuple[list[Path], Any, list[str]]]:
    """Chunks of (readable paths, a fastai test DataLoader over them, unreadable-image messages).

    Decoding runs in threads, from the prepared cache where it holds the image at a size that serves.
    """
    from ..artifacts import input_size
    from ..data.loaders import ShopeeImage

    size = input_size(learn)
    sources = use_cache(map(str, images), size)[0] if size else list(map(str, images))
    for part in decode_chunks(sources, load_rgb, progress=progress):
        failures = [err for _, _, err in part if err]
        good = [(images[i], im) for i, im, _ in part if im is not None]
        dl = learn.dls.test_dl([ShopeeImage.create(im) for _, im in good], bs=bs, num_workers=0) if good else None
        yield [p for p, _ in good], dl, failures


def predict_probs(learn, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True,
                  tta: bool = False) -> Predictions:
    """Class probabilities for each readable image; unreadable ones are listed, not fatal.

    `tta`: fastai's test-time augmentation (mean of 4 augmented passes, blended with the plain one).
    """
    import torch

    learn.model.eval()
    done: list[Path] = []
    out: list = []
    failures: list[str] = []
    with learn.no_bar():
        for paths, dl, failed in learner_batches(learn, images, bs, progress):
            failures += failed
            if dl is not None:
                probs, _ = learn.tta(dl=dl) if tta else learn.get_preds(dl=dl)
                done += paths
                out.append(probs.float())  # bf16 when trained under CPU autocast
    probs = torch.cat(out) if out else torch.empty(0, len(learn.dls.vocab))
    return Predictions(done, probs.numpy(), failures)


@dataclass
class LearnerPredictor:
    """A fastai learner behind the predictor interface."""

    learn: Any
    tta: bool = False
    titles: dict[str, str] = field(default_factory=dict)

    @property
    def vocab(self) -> list[str]:
        return [str(v) for v in self.learn.dls.vocab]

    @property
    def output(self) -> str:
        from ..nets.body import is_embedding

        return EMBEDDING if is_embedding(self.learn.model) else PROBS

    def probs(self, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True) -> Predictions:
        return predict_probs(self.learn, images, bs, progress, tta=self.tta)


def normalised(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 NHWC (numpy or torch) -> float NCHW tensor in channels-last memory (a view, no transpose copy)."""
    import torch

    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def packaged(model, mean: Sequence[float], std: Sequence[float], embedding: bool = False):
    """The exportable module: uint8 NHWC images in, probabilities (or unit-length embeddings) out, scaling and
    normalisation inside the graph."""
    import torch
    from torch import nn

    class Packaged(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

        def forward(self, images):
            out = self.model((images.permute(0, 3, 1, 2).float() - self.mean) / self.std)
            return nn.functional.normalize(out, dim=1) if embedding else out.softmax(1)

    return Packaged().eval()


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
        self.precision = resolve_precision(self.precision, self.device.type == "cuda").value

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = normalised(torch.from_numpy(images).to(self.device, non_blocking=True), self.cfg["mean"], self.cfg["std"])
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None):
            out = self.model(x).float()
            embedding = self.cfg.get("output") == EMBEDDING
            return (torch.nn.functional.normalize(out, dim=1) if embedding else out.softmax(1)).cpu().numpy()


@dataclass
class OnnxBackend:
    session: Any
    name: str = "onnx"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(images)})[0]


def onnx_session(model: bytes | Path, cpu: bool = False):
    """An ONNX Runtime CPU (or CUDA, when present and not `cpu`) session with one thread per core."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ShopeeError("--backend onnx needs onnxruntime; run `pip install onnxruntime` or use --backend torch") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads()  # one per usable core, or what the launcher set
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
                 and not (cpu and p == "CUDAExecutionProvider")]
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        where = f"{model}: " if isinstance(model, Path) else ""
        raise ShopeeError(f"{where}not a readable ONNX model ({str(e).splitlines()[0][:160]}); re-export it with `shopee-fastai export-onnx`") from e


def onnx_module(module, example) -> Callable[[Any], Any] | None:
    """`module` (eval mode, float NCHW in, one tensor out) run by ONNX Runtime on CPU, as a torch -> torch function;
    None where onnxruntime is missing or the exporter cannot trace it (the caller keeps PyTorch).

    ORT fuses convolution, BatchNorm and activation, which eager PyTorch runs one by one: for a body's
    lower stages several times faster on CPU (docs/speed.md), agreeing to float rounding.
    """
    import torch

    if not onnx_available():
        return None
    try:
        session = onnx_session(_traced(module.eval(), example, "x", "y"), cpu=True)
    except Exception:  # the exporter's and onnxruntime's own exception types: PyTorch runs it instead
        return None

    def run(x):
        y = session.run(None, {"x": np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(y).contiguous(memory_format=torch.channels_last) if y.ndim == 4 else torch.from_numpy(y)

    return run


def _traced(module, example, input_name: str, output_name: str) -> bytes:
    """`module` traced by torch's ONNX exporter on `example`, batch axis dynamic, exporter warnings silenced."""
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return buf.getvalue()


def onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def onnx_graph(model, cfg: dict[str, Any]):
    """The packaged model as an ONNX graph (dynamic batch)."""
    import copy

    import onnx
    import torch

    # a copy: the caller's model stays on its device, in its precision and mode
    module = packaged(copy.deepcopy(model).cpu().float(), cfg["mean"], cfg["std"], cfg.get("output") == EMBEDDING)
    example = torch.zeros(2, cfg["size"], cfg["size"], 3, dtype=torch.uint8)
    return onnx.load_from_string(_traced(module, example, ONNX_INPUT, ONNX_OUTPUT))


def with_config(graph, cfg: dict[str, Any], dest: Path) -> Path:
    """Write `graph` to `dest` atomically with `cfg` as JSON in its metadata (what predicting from it needs)."""
    import onnx

    from ..artifacts import META_KEY
    from ..io import atomic_path

    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {META_KEY: json.dumps(cfg)})
    with atomic_path(dest) as tmp:
        tmp.write_bytes(graph.SerializeToString())
    return dest


def onnx_config(session, where: Path | str) -> dict[str, Any]:
    from ..artifacts import parse_config

    return parse_config(session.get_modelmeta().custom_metadata_map, f"{where}: an ONNX model",
                        "export it with `shopee-fastai export-onnx`")


def export_onnx(model, cfg: dict[str, Any], dest: Path, source: dict[str, str] | None = None) -> Path:
    """Write the packaged model to `dest` atomically; it predicts without fastai or torch.

    `source`: digests of the model files it was exported from ({".pkl": ..., ".safetensors": ...}), so
    `predict` on one of those can take this graph instead, knowing it holds the same weights.
    """
    return with_config(onnx_graph(model, cfg), {**cfg, **({"source": source} if source else {})}, dest)


def cached_onnx(model_file: Path, build: Callable[[], tuple[Any, dict[str, Any]]]) -> Path:
    """The ONNX graph for `model_file`, exported on first use and cached by the file's identity."""
    from ..artifacts import ONNX
    from ..config import cache_dir
    from ..io import file_key

    dest = cache_dir() / "onnx" / f"{Path(model_file).stem}-{file_key(Path(model_file))}{ONNX}"
    if not dest.is_file():
        export_onnx(*build(), dest)
    return dest


@dataclass
class FastPredictor:
    """A network behind a TorchBackend or OnnxBackend, with the config that says how to feed it."""

    backend: Any  # TorchBackend | OnnxBackend
    cfg: dict[str, Any]
    draft: bool = True
    titles: dict[str, str] = field(default_factory=dict)

    @property
    def vocab(self) -> list[str]:
        return list(self.cfg["classes"])

    @property
    def output(self) -> str:
        return self.cfg.get("output", PROBS)

    def probs(self, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True):
        """Probabilities for the readable images, in input order; unreadable ones are listed, not fatal."""
        from fastprogress.fastprogress import progress_bar

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


def onnx_predictor(path: Path) -> FastPredictor:
    """An `.onnx` export behind ONNX Runtime, with the config from its metadata."""
    session = onnx_session(path)
    return FastPredictor(OnnxBackend(session), onnx_config(session, path))
