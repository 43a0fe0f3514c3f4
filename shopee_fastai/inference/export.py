"""A model's exports: the weights-only `.safetensors` and the ONNX graph, each with the config that predicts from it.

The config (arch, classes, input size and statistics, titles) is read from the learner itself, so a
`.safetensors` or `.onnx` predicts like the `.pkl` it came from (inference/load.py reads them back). The
graph takes uint8 NHWC images and returns probabilities (or unit embeddings), scaling and normalisation
inside, so running it needs only ONNX Runtime, NumPy and Pillow. Its int8 quantisation: inference/quantize.py.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from fastai.data.transforms import Normalize
from safetensors.torch import save_file
from torch import nn

from ..artifacts import FORMAT, META_KEY
from ..config import CNN_ARCH, EMBEDDING, PROBS
from ..io import atomic_path
from ..nets.body import embedding_dim, is_embedding
from ..nets.cnn import HandCNN
from ..nets.ensemble import Ensemble
from .backends import ONNX_INPUT, ONNX_OUTPUT, onnx_available, onnx_session
from .torch_backends import input_size

ONNX_OPSET = 17


def learner_config(learn, arch: str | None = None, titles: dict[str, str] | None = None) -> dict[str, Any]:
    """What a weights-only or ONNX export needs to predict like `learn`, read from the learner itself."""
    norm = next(t for t in learn.dls.after_batch.fs if isinstance(t, Normalize))
    embedding = is_embedding(learn.model)
    output = {"output": EMBEDDING, "dim": embedding_dim(learn.model)} if embedding else {"output": PROBS}
    if isinstance(learn.model, Ensemble):
        output.update(members=len(learn.model.members), top_stages=len(learn.model.members[0][0]) - 2)
    arch = arch or getattr(learn, "arch", None) or (CNN_ARCH if isinstance(learn.model, HandCNN) else None)
    return {"format": FORMAT, "arch": arch if isinstance(arch, str) else None, "classes": [str(c) for c in learn.dls.vocab],
            "size": input_size(learn), "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(),
            "preprocess": "centre crop to square, bilinear resize to size, /255, normalise", "titles": dict(titles or {}), **output}


def write_safetensors(learn, arch: str, dest: Path, titles: dict[str, str] | None = None) -> None:
    """Write the model's tensors and config to `dest` atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(learner_config(learn, arch, titles))})


class Packaged(nn.Module):
    """The exportable module: uint8 NHWC images in, probabilities (or unit-length embeddings) out, scaling and
    normalisation inside the graph."""

    def __init__(self, model: nn.Module, mean, std, embedding: bool = False):
        super().__init__()
        self.model, self.embedding = model, embedding
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, images):
        out = self.model((images.permute(0, 3, 1, 2).float() - self.mean) / self.std)
        return nn.functional.normalize(out, dim=1) if self.embedding else out.softmax(1)


def _traced(module, example, input_name: str, output_name: str) -> bytes:
    """`module` traced by torch's ONNX exporter on `example`, batch axis dynamic, exporter warnings silenced."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return buf.getvalue()


def onnx_graph(model, cfg: dict[str, Any]):
    """The packaged model as an ONNX graph (dynamic batch)."""
    # a copy: the caller's model stays on its device, in its precision and mode
    module = Packaged(copy.deepcopy(model).cpu().float(), cfg["mean"], cfg["std"], cfg.get("output") == EMBEDDING).eval()
    example = torch.zeros(2, cfg["size"], cfg["size"], 3, dtype=torch.uint8)
    return onnx.load_from_string(_traced(module, example, ONNX_INPUT, ONNX_OUTPUT))


def with_config(graph, cfg: dict[str, Any], dest: Path) -> Path:
    """Write `graph` to `dest` atomically with `cfg` as JSON in its metadata (what predicting from it needs)."""
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {META_KEY: json.dumps(cfg)})
    with atomic_path(dest) as tmp:
        tmp.write_bytes(graph.SerializeToString())
    return dest


def write_onnx(model, cfg: dict[str, Any], dest: Path, source: dict[str, str] | None = None) -> Path:
    """Write a network's packaged graph, with `cfg`, to `dest` atomically; it predicts without fastai or torch.
    (From a model file, with its int8 graph: training.train.export_onnx, the `export-onnx` command.)

    `source`: digests of the model files it was exported from ({".pkl": ..., ".safetensors": ...}), so
    `predict` on one of those can take this graph instead, knowing it holds the same weights.
    """
    return with_config(onnx_graph(model, cfg), {**cfg, **({"source": source} if source else {})}, dest)


def onnx_module(module, example) -> Callable[[Any], Any] | None:
    """`module` (eval mode, float NCHW in, one tensor out) run by ONNX Runtime on CPU, as a torch -> torch function;
    None where onnxruntime is missing or the exporter cannot trace it (the caller keeps PyTorch).

    ORT fuses convolution, BatchNorm and activation, which eager PyTorch runs one by one: for a body's
    lower stages several times faster on CPU (docs/speed.md), agreeing to float rounding.
    """
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
