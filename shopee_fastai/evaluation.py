"""Score an exported model on images its training never saw, with the numbers and pictures a person checks.

Every score goes through the predictor `predict` uses (inference/load.py), so each backend, TTA and int8
are scored as they predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .artifacts import ModelCard, model_titles
from .config import TOP_K, Backend, Precision
from .data import split as S
from .data import table as D
from .errors import ShopeeError
from .inference.load import load_classifier
from .inference.predictions import Predictor, display_name
from .io import write_json, write_text
from .plots import confusion_figure, image_grid

MOST_CONFUSED = 20  # pairs listed in the report and drawn in confusion.png
TOP_LOSSES = 16
PICTURE_TITLE = 24  # characters of a title shown beside its class in figures
UNKNOWN = "(not a class of this model)"


def as_predictor(model) -> Predictor:
    """A predictor as it is, or a fastai Learner behind the predictor interface (a run scores its own learner)."""
    if hasattr(model, "dls"):
        from .inference.torch_backends import LearnerPredictor  # imports torch: only a Learner at hand needs it

        return LearnerPredictor(model)
    return model


def accuracy_on(model, rows: pd.DataFrame, progress: bool = False) -> float | None:
    """Top-1 accuracy of `model` (a predictor or a Learner) on `rows` (`path`, `label_group`); None when there are
    none. Unreadable images count as wrong."""
    if rows.empty:
        return None
    predictor = as_predictor(model)
    probs, _ = _probs_for(predictor, rows, progress=progress)
    return round(float(_hits(probs, _targets(rows, predictor.vocab), 1).mean()), 4)


def _targets(rows: pd.DataFrame, vocab: Sequence) -> np.ndarray:
    """Class index of each row's label, -1 where the model has no such class."""
    index = {str(v): i for i, v in enumerate(vocab)}
    return np.array([index.get(str(y), -1) for y in rows[D.LABEL]])


def _probs_for(predictor: Predictor, rows: pd.DataFrame, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """[len(rows), n_classes] probabilities in row order; an unreadable image's row is all zeros (always wrong)."""
    preds = predictor.outputs([Path(p) for p in rows[D.PATH]], progress=progress)
    out = np.zeros((len(rows), len(predictor.vocab)), np.float32)
    at = {str(p): i for i, p in enumerate(preds.paths)}
    for r, p in enumerate(rows[D.PATH]):
        if str(p) in at:
            out[r] = preds.outputs[at[str(p)]]
    return out, preds.failures


def _hits(probs: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (top == targets[:, None]).any(1) & probs.any(1)


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-k accuracy, per-class precision/recall/F1/support, their macro means, and the confusion matrix."""
    n = len(classes)
    pred = probs.argmax(1)
    read = probs.any(1)  # unreadable images predict nothing (and count as wrong in accuracy)
    known = targets >= 0
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (targets[known & read], pred[known & read]), 1)
    tp = np.diag(cm).astype(float)
    predicted = np.bincount(pred[read], minlength=n).astype(float)  # rows of unknown labels are false positives too
    support = np.bincount(targets[known], minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = pd.DataFrame({"label_group": list(map(str, classes)), "precision": precision.round(4),
                              "recall": recall.round(4), "f1": f1.round(4), "support": support.astype(int)})
    present = support > 0
    return {"images": int(len(targets)), "top1": round(float(_hits(probs, targets, 1).mean()), 4),
            f"top{TOP_K}": round(float(_hits(probs, targets, min(TOP_K, n)).mean()), 4),
            "macro_precision": round(float(precision[present].mean()), 4) if present.any() else None,
            "macro_recall": round(float(recall[present].mean()), 4) if present.any() else None,
            "macro_f1": round(float(f1[present].mean()), 4) if present.any() else None,
            "unknown_labels": int((~known).sum()), "per_class": per_class, "confusion": cm}


def most_confused(cm: np.ndarray, classes: Sequence[str], top: int = MOST_CONFUSED) -> list[tuple[str, str, int]]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(str(classes[i]), str(classes[j]), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))]
    return [p for p in pairs if p[2] > 0]


def _write_report(out: Path, rows: pd.DataFrame, probs: np.ndarray, classes: list[str], metrics: dict | None,
                  title: str, titles: dict[str, str]) -> None:
    pred = probs.argmax(1)
    table = pd.DataFrame({D.ID: rows[D.ID] if D.ID in rows else rows[D.PATH], D.PATH: rows[D.PATH],
                          "predicted": [classes[i] for i in pred],
                          "predicted_title": [titles.get(classes[i], "") for i in pred], "probability": probs.max(1).round(4)})
    if metrics is not None:
        table[D.LABEL] = rows[D.LABEL].astype(str).values
    write_text(out / "predictions.csv", table.to_csv(index=False))
    if metrics is None:
        return
    per_class = metrics["per_class"].assign(title=lambda t: t["label_group"].map(lambda c: titles.get(c, "")))
    write_text(out / "per_class.csv", per_class.to_csv(index=False))
    confused = most_confused(metrics["confusion"], classes)
    name = {c: display_name(c, titles, PICTURE_TITLE) for c in classes}
    confusion_figure(out / "confusion.png", metrics["confusion"], [name[c] for c in classes],
                     [(name[a], name[b], n) for a, b, n in confused], title)
    targets = _targets(rows, classes)
    p_true = np.where(targets >= 0, probs[np.arange(len(rows)), np.maximum(targets, 0)], 0.0)
    loss = -np.log(np.clip(p_true, 1e-7, 1))
    worst = np.argsort(-loss, kind="stable")[:TOP_LOSSES]
    captions = [f"pred {name[classes[pred[i]]]} ({probs[i].max():.2f})\n"
                f"actual {display_name(table[D.LABEL].iloc[i], titles, PICTURE_TITLE)}\nloss {loss[i]:.2f}" for i in worst]
    image_grid(out / "top_losses.png", rows[D.PATH].iloc[worst].tolist(), captions, f"{title}: top losses")
    summary = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}
    write_json(out / "metrics.json", {**summary, "most_confused": confused,
                                      "titles": {c: titles[c] for c in classes if c in titles}})


def evaluate(model: Path, data: Path | None = None, csv_name: str = "train.csv", tta: bool = False,
             out: Path | None = None, progress: bool = True, backend: str = Backend.auto,
             precision: str = Precision.auto) -> dict[str, Any]:
    """Metrics and a report folder for `model` (any model file, on the predictor `predict` would use with the same
    `backend`, `precision` and `tta`): on its saved test split, or on every row of `data`'s CSV.

    Labels are optional with `data`: without a `label_group` column only predictions are written.
    """
    card = ModelCard.read(model)
    if card.matching is not None:
        raise ShopeeError(f"--model {model}: an embedding model has no classes to score; its matching F1 is in its card, "
                          "and `shopee-fastai match --model` scores it on any labelled CSV")
    predictor = load_classifier(model, backend, precision, tta)
    classes = [str(v) for v in predictor.vocab]
    result: dict[str, Any] = {"model": str(model), "tta": tta, "predictor": predictor.why}
    if data is None:
        split = S.read_split(Path(model).parent / card.split["file"])
        table = D.read_table(Path(card.data))
        rows = S.rows_in_split(table, split, S.TEST)
        result["valid_accuracy"] = accuracy_on(predictor, S.rows_in_split(table, split, S.VALID))
        where = f"{card.name}-test"
    else:
        rows = D.read_table(Path(data), csv_name, labels=False)
        where = f"{card.name}-{Path(data).name}"
    if rows.empty:
        raise ShopeeError(f"no images to evaluate on (empty test split of {model}); pass --data DIR")
    labelled = D.LABEL in rows.columns and rows[D.LABEL].notna().all()
    probs, failures = _probs_for(predictor, rows, progress=progress)
    metrics = classification_metrics(probs, _targets(rows, classes), classes) if labelled else None
    out = Path(out or Path("reports") / where)
    _write_report(out, rows, probs, classes, metrics, card.name, model_titles(model))
    result.update({"images": len(rows), "unreadable": len(failures), "report": str(out)})
    if metrics:
        result.update({k: v for k, v in metrics.items() if k not in ("per_class", "confusion")})
        result["test_accuracy"] = metrics["top1"] if data is None else None
    return result
