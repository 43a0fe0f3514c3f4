"""The runtime behind the one predictor interface (inference/predictions.py), without torch.

- `FastPredictor`: a network behind an `OnnxBackend` (ONNX Runtime on a graph that takes uint8 NHWC images
  and returns probabilities, scaling and normalisation inside the graph, so it loads neither fastai nor
  torch) or a `TorchBackend` (inference/torch_backends.py).
- `batches`: photos decoded in threads while the network works (`data.images.decode_chunks`), JPEGs at
  reduced scale when far larger than the input, kept uint8 until the backend.

Preprocessing is fastai's validation pipeline, so every backend gives the learner's outputs up to
floating-point rounding. Nothing here imports torch or fastai: a first `predict` on an ONNX graph pays
only for what it uses.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..config import PREDICT_BS, PROBS
from ..data.cache import use_cache
from ..data.images import decode, decode_chunks
from ..errors import ShopeeError
from ..machine import threads
from .predictions import Predictions

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


@dataclass
class OnnxBackend:
    session: Any
    name: str = "onnx"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(images)})[0]


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_session(model: bytes | Path, cpu: bool = False):
    """An ONNX Runtime CPU (or CUDA, when present and not `cpu`) session with one thread per core."""
    try:
        import onnxruntime as ort  # an optional install: without it, predict runs PyTorch
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

    def outputs(self, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True) -> Predictions:
        """The network's outputs for the readable images, in input order; unreadable ones are listed, not fatal."""
        failures: list[str] = []
        stream = batches(images, self.cfg["size"], bs, self.draft, failures=failures)
        n_batches = -(-len(images) // bs)
        done, out = [], []
        if progress and n_batches > 1:  # fastprogress prints a stray bar even with display=False, so only wrap when showing one
            from fastprogress.fastprogress import progress_bar  # its import costs a cold predict a third of a second

            stream = progress_bar(stream, total=n_batches)
        for batch in stream:
            out.append(self.backend(batch.images))
            done += batch.paths
        return Predictions(done, np.concatenate(out) if out else np.zeros((0, len(self.vocab)), np.float32), failures)
