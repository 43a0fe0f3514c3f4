"""Train and export: prepare the data, build the learner, run the recipe's phases, score, write every file."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import fastai
import matplotlib
import matplotlib.pyplot as plt
import timm
import torch
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.data.core import DataLoaders

from .. import __version__
from ..artifacts import ModelCard, ModelFiles
from ..config import REFIT_VALID_GROUPS, VALID_GROUPS, ResolvedConfig, TrainConfig
from ..data import split as S
from ..data.table import LABEL, calibration_photos, group_titles, read_table
from ..device import leave_world, world
from ..errors import ShopeeError
from ..evaluation import accuracy_on
from ..inference.export import learner_config, write_safetensors
from ..inference.load import load_network
from ..inference.quantize import write_graphs
from ..io import atomic_path
from ..nets.body import input_stats
from ..plots import training_curves
from .callbacks import remove_checkpoint, strip
from .features import as_ensemble
from .learner import Prepared, setup
from .objective import calibrate_matching
from .recipes import fit


def versions() -> dict[str, str]:
    return {"shopee_fastai": __version__, "fastai": fastai.__version__, "timm": timm.__version__, "torch": torch.__version__}


@dataclass
class Trained:
    """A fitted learner with its model card, before export."""

    learn: Any
    card: ModelCard
    prep: Prepared
    files: ModelFiles


def fit_learner(cfg: TrainConfig) -> Trained:
    """Everything `train` does except writing the model: prepare data, build, fit, score valid and test.

    An embedding with `refit` then trains its final model again, on every group but the 2 it validates on,
    keeping the settings calibrated on the groups the first run held out: more groups make a stronger
    embedding for products it never saw (docs/results.md).
    """
    trained = _fit(cfg, VALID_GROUPS)
    first = trained.card.matching
    # a refit needs settings to keep and more groups to train on (with few groups both runs hold out 2)
    if not (cfg.loss.is_embedding and cfg.refit and first.get("calibrated") and first["valid_groups"] > 2):
        return trained
    seconds, held_out = trained.card.wall_time_s["total"], sorted(trained.prep.rows(S.VALID)[LABEL].astype(str).unique())
    del trained  # its learner and cached maps, before the second run builds its own
    # No checkpoints, resume or early stop in the final run: the calibration run's checkpoint stays until export,
    # so a --resume after an interruption here finds that run complete and trains the final model again.
    final = _fit(replace(cfg, resume=False, checkpoint_every=0, early_stop=0, keep_best=False), REFIT_VALID_GROUPS)
    own = final.card.matching
    settings = {k: first[k] for k in ("threshold", "min2", "blend", "valid_f1", "valid_groups", "calibrated", "on_grid_edge")}
    final.card.matching = {**settings, "calibration_groups": held_out,
                           "calibration_run": {k: first[k] for k in ("test_f1_unseen", "test_f1") if k in first},
                           "refit": {"valid_groups": own["valid_groups"], "valid_f1": own["valid_f1"]},
                           **({"test_f1": own["test_f1"]} if "test_f1" in own else {})}
    final.card.wall_time_s = {**final.card.wall_time_s, "calibration_run": seconds,
                              "total": round(seconds + final.card.wall_time_s["total"], 1)}
    return final


def _fit(cfg: TrainConfig, valid_groups: float) -> Trained:
    files = ModelFiles.of(cfg.models_dir, cfg.model_name)
    started = time.perf_counter()
    run, choice, prep, learn = setup(cfg, files.skipped, valid_groups)  # from here on, the resolved settings: the card records them
    if run.ensemble > 1:
        as_ensemble(learn, run)
    history, ran, times = fit(learn, run, prep.fold_of_path())
    mean, std = input_stats(run.arch)
    passes = sum(run.head_views if h["phase"].startswith("head") else 1 for h in ran)  # a head epoch passes every cached view
    card = ModelCard(
        name=run.name, arch=run.arch, weights=choice.source, classes=[str(c) for c in learn.dls.vocab],
        input={"size": run.size, "mean": list(mean), "std": list(std)}, data=str(Path(run.data).resolve()),
        config={k: v for k, v in asdict(run).items() if k != "data"},
        split={"mode": "groups" if run.loss.is_embedding else str(run.split), "seed": run.seed, "holdout": run.holdout, "file": files.split.name,
               **S.counts(prep.split),
               **({"member_folds": prep.fold_sizes(run.ensemble)} if prep.folds is not None else {})},
        leaks=asdict(prep.leaks) if prep.leaks else None, titles=group_titles(prep.table), precision=str(learn.precision),
        skipped_images=len(prep.skipped), cached_images=prep.cached, history=history,
        params=int(sum(p.numel() for p in learn.model.parameters())),
        images_per_s=round(len(learn.dls.train_ds) * passes / sum(times.values()), 1) if times else 0.0,
        **_scores(learn, prep, run),
        wall_time_s={"total": round(time.perf_counter() - started, 1), **{k: round(v, 1) for k, v in times.items()}},
        versions=versions())
    return Trained(learn, card, prep, files)


def _scores(learn, prep: Prepared, cfg: ResolvedConfig) -> dict[str, Any]:
    """A classifier's accuracy on each split; an embedding's matching settings and F1 on groups it never saw."""
    if cfg.loss.is_embedding:
        return {"matching": calibrate_matching(learn, prep, cfg.seed)}
    scores = {"train_accuracy": accuracy_on(learn, prep.rows(S.TRAIN)) if cfg.score_train else None,
              "test_accuracy": accuracy_on(learn, prep.rows(S.TEST))}
    if cfg.ensemble > 1:
        scores["members"] = _member_scores(learn, prep)
    # with member folds the other members trained on the valid photos: only each member on its own fold is unseen
    scores["valid_accuracy"] = (accuracy_on(learn, prep.rows(S.VALID)) if prep.folds is None else
                                _out_of_fold([m["valid_accuracy"] for m in scores["members"]], prep.fold_sizes(cfg.ensemble)))
    return scores


def _out_of_fold(accuracies: list[float | None], sizes: list[int]) -> float | None:
    """Each member's accuracy on its own fold, pooled over the folds' photos: one member's accuracy on photos it
    never saw (the ensemble's own is higher)."""
    if any(a is None for a in accuracies) or not sum(sizes):
        return None
    return round(sum(a * n for a, n in zip(accuracies, sizes)) / sum(sizes), 4)


def _member_scores(learn, prep: Prepared) -> list[dict[str, float | None]]:
    """Each ensemble member's accuracy alone, to show what averaging adds; its valid accuracy on its own fold
    where members have folds."""
    whole, out = learn.model, []
    try:
        for k in range(len(whole.members)):
            learn.model = whole.member(k)
            valid = prep.rows(S.VALID) if prep.folds is None else prep.fold_rows(k)
            out.append({"valid_accuracy": accuracy_on(learn, valid), "test_accuracy": accuracy_on(learn, prep.rows(S.TEST))})
    finally:
        learn.model = whole
    return out


def export(trained: Trained) -> None:
    """Write split, curves, learner, weights, ONNX graphs and card, each atomically; the card last, so a card
    always has its model.

    Under data-parallel training only rank 0 writes.
    """
    if world()[0]:
        return
    files, card = trained.files, trained.card
    strip(trained.learn)
    S.write_split(trained.prep.split, files.split)
    training_curves(files.curves, card.history, f"{card.name}: training curves")
    with atomic_path(files.pkl) as tmp, keeping_valid(trained.learn.dls):
        trained.learn.export(tmp.resolve())
    write_safetensors(trained.learn, card.arch, files.safetensors, card.titles)
    _write_graphs(trained)
    card.write(files.card)
    remove_checkpoint(files)  # the model is complete now


@contextmanager
def keeping_valid(dls):
    """fastai's `export` empties the DataLoaders; keep the validation rows (paths and labels, not photos), so that
    `show_results()` and `ClassificationInterpretation.from_learner` work on the loaded learner as on the trained
    one, wherever those photos are."""
    def new_empty():
        empty = DataLoaders.new_empty(dls)
        return DataLoaders(empty.train, dls.valid.new(shuffle=False), path=dls.path, device=dls.device)

    dls.new_empty = new_empty
    try:
        yield
    finally:
        del dls.new_empty


def _write_graphs(trained: Trained) -> None:
    """The fp32 ONNX graph, so the model's first `predict` loads neither fastai nor torch, and with `--int8` its
    int8 graph; the card records each one's seconds. They are optional: where they cannot be written (an arch the exporter cannot
    trace, a full disk), the model keeps its .pkl and .safetensors and predicts through PyTorch."""
    learn, card, files = trained.learn, trained.card, trained.files
    photos = calibration_photos(trained.prep.rows(S.TRAIN), card.split["seed"]) if card.config["int8"] else None
    files.int8.unlink(missing_ok=True)  # an int8 graph beside the model describes these weights or is gone
    started = time.perf_counter()
    try:
        write_graphs(learn.model, learner_config(learn, card.arch, card.titles), files.onnx, [files.pkl, files.safetensors],
                     photos, timings=card.wall_time_s)
    except Exception as e:  # ShopeeError, and the exporter's and quantiser's own exception types
        for graph in (files.onnx, files.int8):
            graph.unlink(missing_ok=True)  # never leave a graph of an older model beside this one
        warnings.warn(f"{card.arch}: no ONNX graphs written ({type(e).__name__}: {str(e)[:120]}); predict runs PyTorch")
    card.wall_time_s["total"] = round(card.wall_time_s["total"] + time.perf_counter() - started, 1)


def export_onnx(model: Path, out: Path | None = None, int8: bool = False, data: Path | None = None) -> list[Path]:
    """Write a model file's ONNX graph to `out` (default: beside it), and with `int8` its int8 graph calibrated on
    `data`'s photos: for models trained elsewhere, or graphs written again. Returns the files written."""
    if int8 and data is None:
        raise ShopeeError("--int8 calibrates on training photos; add --data DIR (the model's training data)")
    if data is not None and not int8:
        raise ShopeeError("--data is read only with --int8 (its photos calibrate the int8 graph); add --int8 or drop --data")
    photos = calibration_photos(read_table(data, labels=False)) if int8 else None
    return write_graphs(*load_network(model, cpu=True), out or ModelFiles.beside(model).onnx, [model], photos)


def train(cfg: TrainConfig) -> ModelCard:
    """Train and export `models/<name>.pkl` with its split and model card; return the card."""
    trained = fit_learner(cfg)
    export(trained)
    if world()[1] > 1:
        leave_world()  # after rank 0's export, so no rank leaves while another still needs the group
    return trained.card


def lr_find(cfg: TrainConfig, plot: Path | None = None) -> dict[str, float]:
    """fastai's LR range test on the phase `train` starts with (the frozen head if pretrained); plot saved as PNG."""
    run, _, _, learn = setup(cfg)
    matplotlib.use("Agg")  # lr_find draws with pyplot: onto a file, never a window
    plt.close("all")
    found = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=True)
    with atomic_path(plot or ModelFiles.of(run.models_dir, run.name).lr_find) as tmp:
        plt.gcf().savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close("all")
    return {k: float(v) for k, v in found._asdict().items()}
