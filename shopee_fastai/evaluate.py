"""Score an exported model on exactly the images its training never saw (the split saved beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import data as D
from .errors import ShopeeError


def accuracy_on(learn, rows: pd.DataFrame, progress: bool = False) -> float | None:
    """Top-1 accuracy on `rows` (`path`, `label_group`); None when there are none. Unreadable images count as wrong."""
    from .predict import predict_probs

    if rows.empty:
        return None
    preds = predict_probs(learn, [Path(p) for p in rows[D.PATH]], progress=progress)
    vocab = [str(v) for v in learn.dls.vocab]
    predicted = dict(zip(map(str, preds.paths), (vocab[i] for i in preds.probs.argmax(1).tolist())))
    hits = sum(predicted.get(p) == str(y) for p, y in zip(rows[D.PATH], rows[D.LABEL]))
    return round(hits / len(rows), 4)


def model_card(model: Path) -> dict[str, Any]:
    card = Path(model).with_suffix(".json")
    if not card.is_file():
        raise ShopeeError(f"{card}: model card not found beside {model}; it is written by `shopee-fastai train`")
    try:
        return json.loads(card.read_text())
    except json.JSONDecodeError as e:
        raise ShopeeError(f"{card}: not valid JSON ({e.msg} at line {e.lineno}); retrain to rewrite it") from e


def evaluate(model: Path, data: Path | None = None) -> dict[str, Any]:
    """Valid and test accuracy of `model` on its own saved split, reading images from `data` (default: where it trained)."""
    from .predict import load_model

    card = model_card(model)
    split = D.read_split(Path(model).parent / card["split"]["file"])
    table = D.read_table(Path(data or card["data"]))
    learn = load_model(model)
    result: dict[str, Any] = {"model": str(model)}
    for name in (D.VALID, D.TEST):
        rows = D.rows_in_split(table, split, name)
        result[f"{name}_images"] = len(rows)
        result[f"{name}_accuracy"] = accuracy_on(learn, rows, progress=True)
    return result
