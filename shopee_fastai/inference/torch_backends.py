"""The PyTorch side of the predictor interface: the fastai learner itself, and the bare network.

- `LearnerPredictor` / `predict_probs`: the exported learner's own `get_preds` (the reference path; TTA runs here).
- `TorchBackend`: the network channels-last behind a `FastPredictor`, bf16 autocast on CUDA and, opt-in, on
  CPUs with native bf16.

Only a model that runs on PyTorch imports this module (inference/load.py), so an ONNX predict stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..config import EMBEDDING, PREDICT_BS, PROBS
from ..data.cache import use_cache
from ..data.images import decode_chunks, load_rgb
from ..data.loaders import ShopeeImage
from ..device import resolve_precision
from ..nets.body import is_embedding
from .predictions import Predictions


def input_size(learn) -> int | None:
    """The side the learner's item transforms resize to (what a prepared cache must cover)."""
    for t in learn.dls.after_item.fs:
        if hasattr(t, "size") and t.size is not None:
            return int(max(t.size))
    return None


def learner_batches(learn, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True) -> Iterator[tuple[list[Path], Any, list[str]]]:
    """Chunks of (readable paths, a fastai test DataLoader over them, unreadable-image messages).

    Decoding runs in threads, from the prepared cache where it holds the image at a size that serves.
    """
    size = input_size(learn)
    sources = use_cache(map(str, images), size)[0] if size else list(map(str, images))
    for part in decode_chunks(sources, load_rgb, progress=progress):
        failures = [err for _, _, err in part if err]
        good = [(images[i], im) for i, im, _ in part if im is not None]
        dl = learn.dls.test_dl([ShopeeImage.create(im) for _, im in good], bs=bs, num_workers=0) if good else None
        yield [p for p, _ in good], dl, failures


def predict_probs(learn, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True,
                  tta: bool = False) -> Predictions:
    """The learner's outputs (class probabilities, or an embedding learner's embeddings) for each readable
    image; unreadable ones are listed, not fatal.

    `tta`: fastai's test-time augmentation (mean of 4 augmented passes, blended with the plain one).
    """
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
        return EMBEDDING if is_embedding(self.learn.model) else PROBS

    def outputs(self, images: Sequence[Path], bs: int = PREDICT_BS, progress: bool = True) -> Predictions:
        return predict_probs(self.learn, images, bs, progress, tta=self.tta)


def normalised(images, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NHWC (numpy or torch) -> float NCHW tensor in channels-last memory (a view, no transpose copy)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


@dataclass
class TorchBackend:
    model: Any
    cfg: dict[str, Any]
    precision: str = "auto"
    name: str = "torch"

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device
        self.model = self.model.eval().to(memory_format=torch.channels_last)
        self.precision = resolve_precision(self.precision, self.device.type == "cuda").value

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = normalised(torch.from_numpy(images).to(self.device, non_blocking=True), self.cfg["mean"], self.cfg["std"])
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None):
            out = self.model(x).float()
            embedding = self.cfg.get("output") == EMBEDDING
            return (torch.nn.functional.normalize(out, dim=1) if embedding else out.softmax(1)).cpu().numpy()
