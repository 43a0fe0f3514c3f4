"""The one predictor interface: photos in, label-group probabilities (or embeddings) out, unreadable photos listed, not fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np


@dataclass
class Predictions:
    paths: list[Path]  # images that were predicted, in input order
    outputs: np.ndarray  # float32 [len(paths), n_classes] probabilities, or [len(paths), dim] unit embeddings
    failures: list[str]  # one line per image that could not be read


class Predictor(Protocol):
    """What every backend offers (fastai learner, PyTorch module, ONNX Runtime session)."""

    titles: dict[str, str]  # class -> readable title ({} when the model keeps none)

    @property
    def vocab(self) -> list[str]: ...

    @property
    def output(self) -> str: ...  # what `outputs` returns: "probs" (class probabilities) or "embedding" (unit vectors)

    def outputs(self, images: Sequence[Path], bs: int = ..., progress: bool = True) -> Predictions: ...


def top_k(probs, vocab: Sequence, k: int, titles: Mapping[str, str] | None = None) -> list[list[dict]]:
    """Best-first `{"label_group", "probability"}` lists, one per row of `probs` (numpy or torch).

    With `titles`, each entry also has the class's `"title"` ("" for a class without one).
    """
    probs = np.asarray(probs)
    k = max(1, min(k, len(vocab)))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    named = (lambda c: {"title": titles.get(c, "")}) if titles is not None else (lambda c: {})
    return [[{"label_group": str(vocab[i]), **named(str(vocab[i])), "probability": round(float(row[i]), 6)} for i in ids]
            for row, ids in zip(probs, idx)]


def display_name(label: str, titles: Mapping[str, str] | None, width: int = 40) -> str:
    """`label · title` (the title cut to `width` characters), or the bare label where there is no title."""
    title = (titles or {}).get(str(label), "")
    if len(title) > width:
        title = title[: width - 1] + "…"
    return f"{label} · {title}" if title else str(label)
