"""Figures as PNG files a person can open: one way to make a figure, an image grid, training curves."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .data.images import decode_all, load_rgb
from .io import atomic_path

GRID_MAX, GRID_COLS = 16, 4  # images per figure grid, and per grid row
THUMB = 160  # thumbnail side in pixels: JPEGs are decoded at reduced scale down to this
DPI = 110


@contextlib.contextmanager
def figure(dest: Path, figsize: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state), saved atomically as PNG when the block ends."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    yield fig
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def thumbnail(path: str) -> Image.Image:
    im = load_rgb(path, draft_size=THUMB)
    im.thumbnail((THUMB, THUMB))
    return im


def image_grid(dest: Path, paths: Sequence[str], captions: Sequence[str], title: str) -> None:
    """Thumbnails of up to GRID_MAX images with captions; unreadable images are left out."""
    thumbs = [im for im, _ in decode_all(list(paths)[:GRID_MAX], thumbnail)]
    shown = [(t, c) for t, c in zip(thumbs, captions) if t is not None]
    cols = max(1, min(GRID_COLS, len(shown)))
    nrows = max(1, math.ceil(len(shown) / cols))
    with figure(dest, (2.3 * cols, 2.5 * nrows + 0.4)) as fig:
        fig.suptitle(title, fontsize=10)
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, (thumb, caption) in zip(axes, shown):
            ax.imshow(np.asarray(thumb))
            ax.set_title(caption, fontsize=7)
        if not shown:
            axes[0].text(0.5, 0.5, "no readable images", ha="center", va="center")


def training_curves(dest: Path, history: list[dict], title: str) -> None:
    """Train/valid loss and valid accuracy per epoch, phases (frozen, unfrozen) marked."""
    x = np.arange(1, len(history) + 1)
    with figure(dest, (7, 4)) as fig:
        ax = fig.subplots()
        ax.plot(x, [h["train_loss"] for h in history], "o-", label="train loss")
        ax.plot(x, [h.get("valid_loss") or np.nan for h in history], "o-", label="valid loss")
        ax.set(xlabel="epoch", ylabel="cross-entropy", title=title)
        acc = ax.twinx()
        acc.plot(x, [h.get("accuracy") or np.nan for h in history], "s--", color="tab:green", label="valid accuracy")
        acc.set(ylabel="accuracy", ylim=(0, 1))
        for i in range(1, len(history)):
            if history[i]["phase"] != history[i - 1]["phase"]:
                ax.axvline(i + 0.5, color="grey", ls=":")
                ax.text(i + 0.6, ax.get_ylim()[1], history[i]["phase"], va="top", fontsize=8, color="grey")
        lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)


def confusion_figure(dest: Path, cm: np.ndarray, classes: Sequence[str], confused: list[tuple[str, str, int]],
                     title: str) -> None:
    """Row-normalised confusion matrix (class names shown up to 30 classes) beside the most-confused pairs."""
    n = len(classes)
    with figure(dest, (13, 6.5)) as fig:
        ax, bars = fig.subplots(1, 2, width_ratios=(1.3, 1))
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, shrink=0.8, label="share of the actual class")
        if n <= 30:
            ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), classes, fontsize=7)
        ax.set(xlabel="predicted", ylabel="actual", title=f"{title}: confusion ({n} classes)")
        labels = [f"{a} → {b}" for a, b, _ in confused][::-1]
        bars.barh(range(len(confused)), [c for *_, c in confused][::-1], color="tab:red")
        bars.set_yticks(range(len(confused)), labels, fontsize=8)
        bars.set(xlabel="images", title="most confused (actual → predicted)")
        if not confused:
            bars.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=bars.transAxes)
