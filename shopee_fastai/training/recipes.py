"""Recipes as lists of phases, and the one loop that runs them with the same callbacks, checkpoints and resume.

A phase is one fastai `fit_one_cycle` on a Learner: the full model (frozen, unfrozen, from scratch) or,
for the default recipe, its top part over cached frozen-part outputs (training/features.py). Every phase
gets the same callbacks, so `--checkpoint-every`, `--resume`, `--early-stop` and `--keep-best` work in
each, and a run killed mid-phase resumes at its last saved epoch with the same schedule.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..artifacts import ModelFiles
from ..config import ResolvedConfig
from ..device import distributed, world
from ..errors import ShopeeError
from .callbacks import Checkpoint, DivergenceGuard, EpochTimer, history, load_checkpoint, read_progress, stopping_callbacks
from .features import features_learner, fit_features

# Options that a resumed run may change: they do not alter what the saved epochs computed.
RESUMABLE = ("resume", "checkpoint_every", "early_stop", "keep_best", "workers", "models_dir", "score_train", "int8")
LR_MULT = 100  # discriminative learning rates after unfreezing: the stem learns 100x slower than the head
UNFROZEN_DIV, UNFROZEN_PCT_START = 5, 0.3  # fastai fine_tune's one-cycle settings for the unfrozen phase
FROZEN_PCT_START = 0.99


@dataclass
class Phase:
    """One fastai fit: the Learner it trains (built when the phase starts) and how it calls fit_one_cycle."""

    name: str
    epochs: int
    learner: Callable[[], Any]
    fit: Callable[[Any, int, int, list], None]  # (learner, epochs, start epoch, callbacks)


def head_phase(member: int, members: int) -> str:
    """The name of a features phase: "head", or "head k/n" for member k of an ensemble."""
    return "head" if members == 1 else f"head {member + 1}/{members}"


def plan(learn, cfg: ResolvedConfig, folds: dict[str, int] | None = None) -> list[Phase]:
    """The phases `cfg` runs, those with no epochs left out (see README: How the default recipe works); `folds`:
    each image path's member fold (`--member-folds`)."""
    lr = cfg.lr
    full = lambda: learn  # noqa: E731

    def unfreeze():  # before a resumed phase loads its optimizer state: unfreezing clears it
        learn.unfreeze()
        return learn

    def unfrozen(lrn, n, start, cbs):
        lrn.fit_one_cycle(n, slice(lr / 2 / LR_MULT, lr / 2), pct_start=UNFROZEN_PCT_START, div=UNFROZEN_DIV,
                          start_epoch=start, cbs=cbs)

    if cfg.cached_head:
        shared: dict = {}  # the frozen part's cache, computed once for every member of an ensemble
        fit_head = lambda lrn, n, start, cbs: fit_features(lrn, cfg, n, start, cbs)  # noqa: E731
        phases = [Phase(head_phase(k, cfg.ensemble), cfg.head_epochs,
                        lambda k=k: features_learner(learn, cfg, k, shared, folds), fit_head) for k in range(cfg.ensemble)]
        phases.append(Phase("unfrozen", cfg.epochs, unfreeze, unfrozen))
    elif cfg.uses_pretrained:
        phases = [Phase("frozen", cfg.freeze_epochs, full,
                        lambda lrn, n, start, cbs: lrn.fit_one_cycle(n, slice(lr), pct_start=FROZEN_PCT_START,
                                                                     start_epoch=start, cbs=cbs)),
                  Phase("unfrozen", cfg.epochs, unfreeze, unfrozen)]
    else:
        phases = [Phase("scratch", cfg.epochs, full,
                        lambda lrn, n, start, cbs: lrn.fit_one_cycle(n, lr, start_epoch=start, cbs=cbs))]
    return [p for p in phases if p.epochs]


def run_options(cfg: ResolvedConfig) -> dict[str, Any]:
    """The options a checkpoint records, as JSON values, so that a resume can check it runs the same training."""
    return {k: v if isinstance(v, (bool, int, float, type(None))) else str(v)
            for k, v in asdict(cfg).items() if k not in RESUMABLE}


def fit(learn, cfg: ResolvedConfig, folds: dict[str, int] | None = None) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Run the recipe's phases (`folds`: as `plan`), checkpointing and resuming where asked.

    Returns the whole per-epoch history, the rows of the epochs this call ran, and seconds per phase.
    """
    files = ModelFiles.of(cfg.models_dir, cfg.name)
    phases = plan(learn, cfg, folds)
    names = [p.name for p in phases]
    options = run_options(cfg)
    saved = read_progress(files, options) if cfg.resume else None
    if saved and saved["phase"] not in names:
        raise ShopeeError(f"--resume: the checkpoint is in phase {saved['phase']!r}, which these options do not run; "
                          "resume with the options it was trained with")
    if saved:
        load_checkpoint(files, learn.model)  # phases before the saved one are done: their result is in these weights
    done: list[dict] = list(saved["history"]) if saved else []
    ran: list[dict] = []
    times: dict[str, float] = {}
    with distributed(learn):
        for phase in phases:
            start = 0
            if saved:
                if names.index(phase.name) < names.index(saved["phase"]):
                    continue
                if phase.name == saved["phase"]:
                    start = saved["epochs_done"]
                    if start >= phase.epochs:
                        continue
            began = time.perf_counter()
            lrn = phase.learner()
            if saved and phase.name == saved["phase"]:
                load_checkpoint(files, learn.model, lrn)  # again, after the phase's set-up, with its optimizer state
            cbs = [Checkpoint(files, learn.model, phase.name, cfg.checkpoint_every, list(done), start, options)
                   ] if cfg.checkpoint_every else []
            # the guard decides per process: under data parallelism one rank skipping a step would stall the others
            guard = [DivergenceGuard()] if world()[1] == 1 else []
            phase.fit(lrn, phase.epochs, start, [EpochTimer(), *guard, *cbs, *stopping_callbacks(cfg, files, start)])
            rows = history(lrn, phase.name, start)
            ran += rows
            done += rows
            times[phase.name] = time.perf_counter() - began
    return done, ran, times
