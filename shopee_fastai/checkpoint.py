"""Resumable training: model, optimizer and progress saved atomically every N epochs, picked up by `--resume`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from fastai.learner import load_model, save_model

from .errors import ShopeeError
from .io import atomic_path, write_json


def checkpoint_paths(models_dir: Path, name: str) -> tuple[Path, Path]:
    base = Path(models_dir) / name
    return Path(f"{base}.ckpt.pth"), Path(f"{base}.ckpt.json")


class Checkpoint(Callback):
    """After every `every`-th epoch of a phase (and its last), save weights + optimizer state, then the progress."""

    order = 65  # after the Recorder (50) has logged the epoch

    def __init__(self, models_dir: Path, name: str, phase: str, every: int, history: list[dict], start: int = 0):
        self.pth, self.state = checkpoint_paths(models_dir, name)
        self.phase, self.every, self.before, self.start = phase, every, history, start

    def after_epoch(self) -> None:
        done = self.epoch + 1
        if self.epoch < self.start or (done % self.every and done != self.n_epoch):
            return  # an epoch skipped on resume, or not a checkpoint epoch
        with atomic_path(self.pth) as tmp:
            save_model(tmp, self.learn.model, self.learn.opt, with_opt=True)
        from .train import _history

        now = _history(self.learn, self.phase, self.start)
        write_json(self.state, {"phase": self.phase, "epochs_done": done, "history": self.before + now})


def load_checkpoint(learn, models_dir: Path, name: str) -> dict[str, Any]:
    """Put the saved weights and optimizer state into `learn`; return the saved progress."""
    pth, state = checkpoint_paths(models_dir, name)
    if not (pth.is_file() and state.is_file()):
        raise ShopeeError(f"{pth}: no checkpoint to resume from; train with --checkpoint-every N first (same --name)")
    try:
        progress = json.loads(state.read_text())
        if learn.opt is None:
            learn.create_opt()
        load_model(pth, learn.model, learn.opt, with_opt=True)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise ShopeeError(f"{pth}: checkpoint unreadable or from other options ({str(e).splitlines()[0][:120]}); "
                          "resume with the options it was trained with, or train afresh") from e
    return progress


def remove_checkpoint(models_dir: Path, name: str) -> None:
    for p in checkpoint_paths(models_dir, name):
        p.unlink(missing_ok=True)
