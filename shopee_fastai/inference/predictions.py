"""The one predictor interface: photos in, label-group probabilities out, unreadable photos listed, not fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


@dataclass
class Predictions:
    paths: list[Path]  # images that were predicted, in input order
    probs: np.ndarray  # float32 [len(paths), n_classes]
    failures: list[str]  # one line per image that could not be read


class Predictor(Protocol):
    """What every backend offers (fastai learner, PyTorch module, ONNX Runtime session)."""

    @property
    def vocab(self) -> list[str]: ...

    def probs(self, images: Sequence[Path], bs: int = ..., progress: bool = True) -> Predictions: ...


def top_k(probs, vocab: Sequence, k: int) -> list[list[dict]]:
    """Best-first `{"label_group", "probability"}` lists, one per row of `probs` (numpy or torch)."""
    probs = np.asarray(probs)
    k = max(1, min(k, len(vocab)))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"label_group": str(vocab[i]), "probability": round(float(row[i]), 6)} for i in ids]
            for row, ids in zip(probs, idx)]
