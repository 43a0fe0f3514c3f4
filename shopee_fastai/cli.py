"""The `shopee-fastai` command: parses options and prints results; the work happens in the library.

Defaults and choices come from config.py. Heavy imports (torch, fastai) happen inside commands.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, List, Optional, get_type_hints

import typer

from . import config as C
from .config import Aug, Backend, Index, Loss, Optimizer, Precision, Recipe, Split
from .errors import ShopeeError
from .machine import pin_threads

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sort product photos into their label group and match listings, with fastai + timm (Kaggle Shopee layout).")

DATA, MODEL, RECIPE, SCHEDULE, RUN = "Data", "Model", "Recipe", "Schedule", "Run"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, (DeprecationWarning, FutureWarning)):
        return  # library housekeeping, not something the user can act on
    print(f"warning: {message}", file=sys.stderr)


def command(fn: Callable) -> Callable:
    """Register `fn` so a ShopeeError becomes one 'error:' line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _one_line_warning
        try:
            return fn(*args, **kwargs)
        except ShopeeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing half-written was kept", err=True)
            raise typer.Exit(130) from None

    return app.command(fn.__name__.replace("_", "-"))(wrapper)


# Every TrainConfig option, declared once: its type and default are the dataclass field's, so they cannot drift;
# here only its help, panel and flag spellings. Commands take the ones that affect them.
TYPES = get_type_hints(C.TrainConfig)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(C.TrainConfig)}


def _option(name: str, panel: str) -> tuple[Any, Any]:
    """A TrainConfig field as (type, typer option); HELP holds its help, or (help, *flag spellings)."""
    text, *flags = (HELP[name],) if isinstance(HELP[name], str) else HELP[name]
    default = ... if DEFAULTS[name] is MISSING else DEFAULTS[name]
    return TYPES[name], typer.Option(default, *flags, help=text, rich_help_panel=panel)


HELP: dict[str, str | tuple[str, ...]] = {
    "data": ("Folder with train.csv and train_images/ (Kaggle layout).", "--data"),
    "top_groups": f"Keep the N largest label groups (0 keeps all; default {C.TOP_GROUPS}, all with a margin --loss).",
    "holdout": "Regex: posting_ids that match form the test split (e.g. '^val_').",
    "split": "leak-free: near-duplicate clusters stay in one split; random: the study's split.",
    "dup_threshold": "Cosine similarity from which two photos of a group count as near-duplicates.",
    "seed": "Seed for the split and initialisation.",
    "size": "Image side in pixels.",
    "bs": "Batch size.",
    "aug": "Batch augmentation: fastai's aug_transforms, a stronger one, the study's, or none.",
    "workers": "DataLoader worker processes (default: 0 on CPU, fastai's one per core with a GPU).",
    "arch": "'cnn' (the study's hand-written CNN) or any timm model name.",
    "pretrained": ("Start from ImageNet weights (see --weights).", "--pretrained/--scratch"),
    "weights": "Local .pth/.safetensors state dict; implies --pretrained.",
    "recipe": "features: trained part on cached frozen-body outputs, then --epochs unfrozen; fine-tune: fastai's frozen then unfrozen.",
    "head_epochs": f"Epochs over all cached views (default {C.HEAD_EPOCHS[True]} when body stages train, else {C.HEAD_EPOCHS[False]}; each --ensemble member: {C.ENSEMBLE_HEAD_EPOCHS}; an embedding: {C.EMBED_HEAD_EPOCHS[True]}).",
    "top_stages": f"Last body stages that train with the head (default {C.TOP_STAGES} for EfficientNet-style bodies, {C.EMBED_TOP_STAGES} for an embedding, else 0: head only).",
    "head_views": f"Cached views per training photo: 1 itself, 2 and its mirror, more add random passes through --aug (default {C.HEAD_VIEWS[True]} when body stages train, else {C.HEAD_VIEWS[False]}; an embedding: {C.EMBED_HEAD_VIEWS[True]}).",
    "ensemble": f"Train N models on one cache of the frozen body (each its own seed) and export them as one model that averages their probabilities (an embedding: their unit-length embeddings). Default {C.DEFAULT_ENSEMBLE} for a classifier of the features recipe, 1 otherwise; 1 trains one model in about 0.6x the time.",
    "body_lr": "Learning rate of those body stages.",
    "label_smoothing": f"Label smoothing of --loss softmax in the cached-features phase (default {C.LABEL_SMOOTHING}; other losses have none).",
    "loss": f"softmax: a classifier, with label smoothing; gce: a classifier whose bounded loss resists mislabelled photos (default: {C.DEFAULT_LOSS} for --recipe features on a pretrained body, else softmax); arcface / subcenter: an embedding for `match`, validated and calibrated on label groups it never trains on.",
    "gce_q": f"--loss gce: its q, from near 0 (cross-entropy: fits every label) to 1 (mean absolute error: most robust to wrong ones; default {C.GCE_Q}).",
    "embed_dim": "Embedding size of a margin --loss.",
    "margin": "Angular margin of a margin --loss, in degrees.",
    "scale": "Logit scale of a margin --loss.",
    "margin_ramp": "A margin --loss: grow the margin from 0 to --margin over this share of training (0: full margin from the start).",
    "member_folds": ("Each ensemble member validates on a fold of its own (the valid split for the first) and trains on "
                     "every other photo, so the ensemble learns from every photo; the card's valid accuracy is then each "
                     "member's on its own fold. Default on for a classifier's ensemble on the leak-free split; "
                     "--no-member-folds: every member validates on the valid split.", "--member-folds/--no-member-folds"),
    "refit": ("A margin --loss: after calibrating on held-out groups, train the final model again on all but 2 groups, "
              "keeping the first network's settings, not re-calibrated (2x the time).", "--refit/--no-refit"),
    "mixup": "fastai MixUp on the cached inputs: Beta(a, a) weight (0: off).",
    "epochs": f"Epochs; unfrozen epochs when pretrained (default {C.EPOCHS}; 0 after --recipe features).",
    "freeze_epochs": "Epochs with the pretrained body frozen first (--recipe fine-tune).",
    "lr": f"Base learning rate (default {C.LR[Optimizer.adam]} Adam, {C.LR[Optimizer.sgd]} SGD).",
    "wd": f"Weight decay (default {C.WD[Optimizer.adam]} Adam, {C.WD[Optimizer.sgd]} SGD; {C.HEAD_WD} in the cached-features phase).",
    "opt": "Optimizer.",
    "name": "Model name (default: <arch>-pretrained, <arch>-scratch, <arch>-ensembleN, or <arch>-<loss>[-ensembleN] for an embedding).",
    "models_dir": "Where the exported model and its files go.",
    "checkpoint_every": "Save model and optimizer every N epochs of every phase (0: never).",
    "resume": ("Continue an interrupted run of the same --name and options.", "--resume"),
    "early_stop": "Stop a phase after N epochs without a lower valid loss (0: never).",
    "keep_best": ("End each phase with its epoch of lowest valid loss.", "--keep-best"),
    "precision": "auto: mixed bf16/fp16 on CUDA, fp32 on CPU; bf16 on CPU needs native bf16.",
    "int8": (f"Also write the int8 ONNX graph for `predict --int8` (calibrated on up to {C.INT8_PHOTOS} training photos).", "--int8"),
}
DATA_OPTIONS = ("data", "top_groups", "holdout", "split", "dup_threshold", "seed", "size", "bs", "aug", "workers")
PANELS = {DATA: DATA_OPTIONS, MODEL: ("arch", "pretrained", "weights"),
          RECIPE: ("recipe", "head_epochs", "top_stages", "head_views", "ensemble", "member_folds", "body_lr", "label_smoothing", "loss",
                   "gce_q", "embed_dim", "margin", "margin_ramp", "scale", "refit", "mixup"),
          SCHEDULE: ("epochs", "freeze_epochs", "lr", "wd", "opt"),
          RUN: ("name", "models_dir", "checkpoint_every", "resume", "early_stop", "keep_best", "precision", "int8")}
OPTIONS = {name: _option(name, panel) for panel, names in PANELS.items() for name in names}
# lr-find runs the first phase's learner: the recipe, schedule length, lr and checkpointing do not touch it.
LR_FIND_OPTIONS = (*DATA_OPTIONS, "arch", "pretrained", "weights", "wd", "opt", "name", "models_dir", "precision")
COMPARE_OPTIONS = (*DATA_OPTIONS, "weights", "recipe", "epochs", "freeze_epochs", "models_dir")


def with_options(*names: str) -> Callable:
    """Give a command the shared OPTIONS `names`, after its own parameters; they reach it as **kwargs."""

    def add(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=OPTIONS[n][1], annotation=OPTIONS[n][0])
                 for n in names]
        fn.__signature__ = sig.replace(parameters=own + extra)
        return fn

    return add


DataOpt = OPTIONS["data"][1]
WeightsOpt = OPTIONS["weights"][1]
CsvOpt = typer.Option("train.csv", help="The CSV inside --data (test.csv for Kaggle's test set).")


def _report_card(card, files) -> None:
    typer.echo(f"weights: {card.weights}")
    if card.split.get("twin"):
        typer.echo(f"left out of training: {card.split['twin']} direct twin(s) of --holdout photos (same file, phash or "
                   "an embedding at one photo's similarity)")
    if card.leaks:
        from .data.neardup import LeakReport

        typer.echo(f"split: leak-free; {LeakReport(**card.leaks).line()}")
    if card.matching:
        from .matching import MatchSettings

        m = card.matching
        how = ("stored in the card; `match --model` uses it" if m.get("calibrated", True) else
               "the defaults: one held-out group cannot calibrate; add label groups")
        typer.echo(f"matching calibrated on {m['valid_groups']} label group(s) held out of training: F1 {m['valid_f1']} at "
                   f"{MatchSettings.of(m).line()} ({how})")
        if m.get("on_grid_edge"):
            typer.echo(f"warning: the calibrated threshold {m['threshold']} is an end of its search grid, so the best one may lie "
                       "beyond it; check `match --tune` on your own listings", err=True)
        if "test_f1_unseen" in m:
            typer.echo(f"test photos of those groups: F1 {m['test_f1_unseen']}; all {card.split['test']} test photos: F1 {m['test_f1']}")
        if m.get("refit"):
            first = m["calibration_run"]
            typer.echo(f"the calibration run's model on test photos of those groups: F1 {first.get('test_f1_unseen')}; "
                       f"the final model, trained again on all but {m['refit']['valid_groups']} groups with these settings, "
                       f"on all {card.split['test']} test photos: F1 {m.get('test_f1')}")
        typer.echo(f"({card.wall_time_s['total']} s)")
    else:
        oof = " (each member on its own fold)" if card.split.get("member_folds") else ""
        typer.echo(f"valid accuracy {card.valid_accuracy}{oof}  test accuracy {card.test_accuracy}  "
                   f"({card.split['test']} test images, {card.wall_time_s['total']} s)")
    typer.echo(f"exported {files.pkl} (card {files.card}, split {files.split})")


@command
@with_options(*OPTIONS)
def train(**options) -> None:
    """Fine-tune (or train from scratch) and export models/<name>.pkl with its split and model card."""
    from .artifacts import ModelFiles
    from .device import world
    from .training import train as run

    cfg = C.TrainConfig(**options)
    card = run(cfg)
    if world()[0]:
        return  # data-parallel: rank 0 reports and exports
    _report_card(card, ModelFiles.of(cfg.models_dir, card.name))


@command
@with_options(*LR_FIND_OPTIONS)
def lr_find(
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default models/<name>.lr_find.png).", rich_help_panel=RUN),
    **options,
) -> None:
    """fastai's learning-rate range test on the phase train starts with; prints valley/slide/minimum/steep, saves the plot."""
    from .artifacts import ModelFiles
    from .training import lr_find as run

    cfg = C.TrainConfig(**options)
    for k, v in run(cfg, plot).items():
        typer.echo(f"{k:8s} {v:.2e}")
    typer.echo(f"plot: {plot or ModelFiles.of(cfg.models_dir, cfg.model_name).lr_find}")


@command
@with_options(*COMPARE_OPTIONS)
def compare(
    seeds: int = typer.Option(1, help="Repeat over this many seeds; mean ± sd.", rich_help_panel=RUN),
    out: Path = typer.Option(Path("reports/compare"), help="Folder for table.md, runs.csv and accuracy.png.", rich_help_panel=RUN),
    **options,
) -> None:
    """Hand CNN (with/without augmentation), EfficientNet-B0 from scratch and pretrained, on one split; table + chart."""
    from .training.compare import compare as run

    cfg = C.TrainConfig(**options)
    table = run(cfg, seeds, out)
    for r in table.itertuples():
        typer.echo(f"{r.model:36s} test {r.test:15s} valid {r.valid:15s} {r.params / 1e6:5.2f} M params  {r.wall_s:6.0f} s")
    typer.echo(f"table: {out / 'table.md'}  chart: {out / 'accuracy.png'}")


def _print_evaluation(r: dict, data: Optional[Path], tta: bool) -> None:
    if r.get("valid_accuracy") is not None:
        typer.echo(f"valid accuracy {r['valid_accuracy']}")
    if "top1" in r:
        typer.echo(f"{'test' if data is None else data} accuracy {r['top1']} (top-5 {r['top5']}) on {r['images']} images; "
                   f"macro F1 {r['macro_f1']}{', TTA' if tta else ''}")
    else:
        typer.echo(f"{r['images']} images predicted (no labels, so no metrics)")
    typer.echo(f"report: {r['report']}")
    if r["unreadable"]:
        typer.echo(f"warning: {r['unreadable']} unreadable image(s) counted as wrong", err=True)


@command
def evaluate(
    model: Path = typer.Option(..., "--model", help="models/<name>.pkl, .safetensors or .onnx (its card beside it)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Score every row of this Kaggle-layout folder instead of the saved test split (labels optional)."),
    csv: str = typer.Option("train.csv", help="The CSV inside --data."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation (fastai's, 5 passes; .pkl only)."),
    int8: bool = typer.Option(False, "--int8", help="Score the model's int8 graph, as `predict --int8` runs it."),
    backend: Backend = typer.Option(Backend.auto, help="Score on the backend `predict --backend` would use: onnx, torch or fastai."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default reports/<model>-test or reports/<model>-<data>)."),
) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall/F1, confusion and top-losses PNGs, predictions CSV."""
    from .evaluation import evaluate as run

    result = run(model, data, csv, tta, out, backend=backend, precision=Precision.int8 if int8 else Precision.auto)
    typer.echo(f"model: {result['predictor']}", err=True)
    _print_evaluation(result, data, tta)


def _print_predictions(predictor, files: list[Path], top_k: int, as_json: bool, bs: int) -> None:
    from .inference.predictions import display_name
    from .inference.predictions import top_k as best

    preds = predictor.outputs(files, bs=bs, progress=not as_json)
    for path, ranked in zip(preds.paths, best(preds.outputs, predictor.vocab, top_k, predictor.titles)):
        if as_json:
            typer.echo(json.dumps({"image": str(path), "predictions": ranked}))
        else:
            typer.echo(f"{path}\t" + "  ".join(f"{display_name(r['label_group'], predictor.titles)} {r['probability']:.3f}"
                                               for r in ranked))
    if preds.failures:
        for line in preds.failures:
            typer.echo(f"error: {line}", err=True)
        raise ShopeeError(f"{len(preds.failures)} of {len(files)} image(s) could not be read (listed above); fix or remove them")


@command
def predict(
    images: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    model: Path = typer.Option(..., "--model", help="models/<name>.pkl (fastai learner), .safetensors (weights only, no pickle) or .onnx (from export-onnx)."),
    top_k: int = typer.Option(C.TOP_K, "--top-k", help="How many label groups to show per image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
    bs: int = typer.Option(C.PREDICT_BS, help="Batch size."),
    int8: bool = typer.Option(False, "--int8", help="Run the model's int8 graph (written by train --int8 or export-onnx --int8): faster on CPU, changes some top-1 predictions."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation (fastai's, 5 passes: slower, usually more accurate; .pkl only)."),
    backend: Backend = typer.Option(Backend.auto, help="Force one: onnx, torch, or fastai (the learner's get_preds). auto: torch on a GPU, else onnx where onnxruntime is installed."),
    precision: Precision = typer.Option(Precision.auto, hidden=True, help="Kept for scripts: int8 is --int8; fp32, bf16 and fp16 pin PyTorch's precision."),
) -> None:
    """Top-k label groups with probabilities for each image; unreadable images are reported and give exit code 2."""
    from .data.images import collect_images
    from .inference.load import load_classifier

    files = collect_images(images)
    predictor = load_classifier(model, backend, Precision.int8 if int8 else precision, tta)
    typer.echo(f"model: {predictor.why}", err=True)
    _print_predictions(predictor, files, top_k, as_json, bs)


@command
def export_onnx(
    model: Path = typer.Option(..., "--model", help="models/<name>.pkl or .safetensors."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default: the model's path with .onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Also write the int8 graph (<name>.int8.onnx), calibrated on --data's training photos."),
    data: Optional[Path] = typer.Option(None, "--data", help="The model's training data (Kaggle layout): photos to calibrate --int8."),
) -> None:
    """Write the model as ONNX (uint8 NHWC images in, probabilities out, config in its metadata) for onnxruntime.

    `train` writes both graphs itself; this is for models trained elsewhere, or to write them again.
    """
    from .training.train import export_onnx as run

    written = run(model, out, int8, data)
    for dest in written:
        typer.echo(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    # beside the model, `predict --model MODEL` finds the graphs by itself; elsewhere, name the graph
    use = model if out is None else written[-1]
    typer.echo(f"predict with `shopee-fastai predict --model {use}{' --int8' if int8 and out is None else ''} IMAGES`")


@command
def eda(
    data: Path = DataOpt,
    out: Path = typer.Option(Path("reports/eda"), help="Folder for report.md, summary.json and the PNG figures."),
    max_images: int = typer.Option(C.EDA_IMAGES, help="Read the headers of at most this many images (a seeded sample)."),
) -> None:
    """Study a data set: groups, duplicates, phash and title groups, image sizes; Markdown report + PNG figures."""
    from .eda import eda as run
    from .eda import format_summary

    typer.echo(format_summary(run(data, out, max_images=max_images)))


@command
def audit(
    data: Path = DataOpt,
    out: Optional[Path] = typer.Option(None, help=f"Folder for issues.csv, report.md, contact.png and fixes.csv (default {C.AUDIT_OUT}); with --apply, the new cleaned folder."),
    apply: Optional[Path] = typer.Option(None, "--apply", help="Apply this fixes.csv: write --data's cleaned copy into --out (photos linked, never copied)."),
    accept: List[str] = typer.Option([], "--accept", help="With --apply: undecided findings of this kind (e.g. wrong_group) take their suggestion; repeatable."),
    top_groups: int = typer.Option(0, help="Only the N largest label groups (0: every group).", rich_help_panel=DATA),
    folds: int = typer.Option(C.AUDIT_FOLDS, help="Cross-validation folds of the out-of-fold probabilities.", rich_help_panel=RECIPE),
    cv_min: int = typer.Option(C.AUDIT_CV_MIN, help="Groups with fewer photos are judged by their photos' neighbours.", rich_help_panel=RECIPE),
    neighbours: int = typer.Option(C.AUDIT_NEIGHBOURS, help="Neighbours that vote on a photo's group and define an outlier.", rich_help_panel=RECIPE),
    titles: bool = typer.Option(True, "--titles/--no-titles", help="Count a title that disagrees with its group as evidence.", rich_help_panel=RECIPE),
    arch: str = typer.Option(C.OFFLINE_ARCH, help="Pretrained timm body whose features are judged.", rich_help_panel=MODEL),
    dup_threshold: float = typer.Option(C.AUDIT_DUP_THRESHOLD, help="Cosine similarity from which photos in two groups are one photo.", rich_help_panel=RECIPE),
    max_merges: int = typer.Option(C.AUDIT_MAX_MERGES, help="Merge candidates listed, strongest first (0: all).", rich_help_panel=RECIPE),
    seed: int = typer.Option(C.SEED, help="Seed of the folds.", rich_help_panel=RUN),
) -> None:
    """Find listings in the wrong group, groups that are one product, odd and duplicated photos; --apply writes the fixes."""
    from .audit import AuditConfig, apply_fixes, run_audit

    if accept and apply is None:
        raise ShopeeError("--accept applies suggestions while writing a cleaned copy; give it with --apply FIXES --out CLEANED")
    if apply is not None:
        done = apply_fixes(data, apply, out, accept)
        typer.echo(f"cleaned copy of {data} in {done} (photos linked); train on it with --data {done}")
        return
    out = out or C.AUDIT_OUT
    cfg = AuditConfig(data=data, out=out, top_groups=top_groups, max_merges=max_merges, folds=folds, cv_min=cv_min, neighbours=neighbours,
                      titles=titles, arch=arch, dup_threshold=dup_threshold, seed=seed)
    result, paths = run_audit(cfg)
    counts = ", ".join(f"{n} {kind}" for kind, n in result.counts().items())
    typer.echo(f"{len(result.table)} listings in {result.table['label_group'].nunique()} groups: {counts} "
               f"({result.seconds['total']:.0f} s)")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))
    typer.echo(f"review with `shopee-fastai serve --audit {out}` or edit {paths['fixes.csv']}, then "
               f"`shopee-fastai audit --data {data} --apply {paths['fixes.csv']} --out CLEANED`")


@command
def prepare(
    data: Path = DataOpt, size: int = OPTIONS["size"][1],
    top_groups: int = typer.Option(0, help="Only the N largest label groups (0: every image in the CSV)."),
) -> None:
    """Pre-resize every image once (shorter side to --size) into the cache that train, lr-find and predict use."""
    from .data.cache import images_root, prepare_folder

    result = prepare_folder(data, size, top_groups)
    typer.echo(f"{result.written} written, {result.reused} already prepared, {len(result.failed)} unreadable; "
               f"cache {images_root() / f's{size}'}")
    for line in list(result.failed.values())[:20]:
        typer.echo(f"warning: {line}", err=True)


@command
@with_options("data", "top_groups", "dup_threshold", "seed", "holdout")
def split(
    out: Optional[Path] = typer.Option(None, help="Write the leak-free split (posting_id,split) to this CSV."),
    **options,
) -> None:
    """Find near-duplicate clusters and report what a plain random split would leak; optionally save the leak-free split."""
    from .data.split import write_split
    from .training.learner import split_data

    found = split_data(C.TrainConfig(**options))[1]
    typer.echo(found.leaks.line())
    typer.echo(found.line())
    if out:
        write_split(found.split, out)
        typer.echo(f"written {out}")


EmbedModelOpt = typer.Option(None, "--model", help="Embed with this model: an embedding model (train --loss arcface) or a classifier's body (.pkl); default: a pretrained backbone.")
EmbedArchOpt = typer.Option(C.OFFLINE_ARCH, help="Pretrained backbone when no --model is given.")


@command
def embed(
    data: Path = DataOpt, csv: str = CsvOpt, model: Optional[Path] = EmbedModelOpt, arch: str = EmbedArchOpt,
    weights: Optional[Path] = WeightsOpt,
    out: Path = typer.Option(Path("embeddings.npy"), help="Where to write the [rows, dim] float32 array (CSV row order)."),
    int8: bool = typer.Option(False, "--int8", help="Embed with the model's int8 graph (train --int8): it lowers match F1 (docs/speed.md)."),
    precision: Precision = typer.Option(Precision.auto, hidden=True, help="Kept for scripts: int8 is --int8; auto: fp32 on CPU, mixed on CUDA."),
) -> None:
    """L2-normalised image embeddings of every row of the CSV, from a trained model or a pretrained backbone.

    Under torchrun / accelerate launch, every process embeds a share of the photos and rank 0 writes them all."""
    from .data.table import PATH, read_table
    from .inference.embed import embed_images
    from .io import write_npy

    emb = embed_images(list(read_table(data, csv, labels=False)[PATH]), model, arch, weights,
                       precision=Precision.int8 if int8 else precision)
    if emb is None:
        return  # data-parallel: rank 0 gathers and writes
    write_npy(out, emb)
    typer.echo(f"{emb.shape[0]} embeddings of {emb.shape[1]} dims written to {out}")


@command
def match(
    data: Path = DataOpt, csv: str = CsvOpt, model: Optional[Path] = EmbedModelOpt, arch: str = EmbedArchOpt,
    weights: Optional[Path] = WeightsOpt,
    embeddings: Optional[Path] = typer.Option(None, help="Use embeddings saved by `embed` instead of computing them."),
    threshold: Optional[float] = typer.Option(None, help=f"Cosine similarity from which two postings match (default: the --model's calibrated one, else {C.MATCH_THRESHOLD})."),
    tune: bool = typer.Option(False, "--tune", help="Pick the threshold on half the label groups; report F1 on the rest."),
    min2: Optional[bool] = typer.Option(None, "--min2/--no-min2", help="Keep the nearest neighbour when nothing else passes (default: the --model's setting, else off)."),
    blend: Optional[bool] = typer.Option(None, "--blend/--no-blend", help="Neighbour blending before matching (default off: it loses on photos from a new occasion, docs/results.md)."),
    phash: bool = typer.Option(False, "--phash", help="Also match postings with identical image_phash."),
    titles: bool = typer.Option(False, "--titles", help="Also match title TF-IDF neighbours."),
    title_threshold: float = typer.Option(C.TITLE_THRESHOLD, help="Cosine similarity for title matches."),
    k: int = typer.Option(C.MAX_K, help=f"Neighbours searched per posting (at most {C.MAX_K})."),
    index: Index = typer.Option(Index.auto, help=f"Neighbour search: exact, hnsw (approximate), auto (exact up to {C.EXACT_MAX:,} postings)."),
    seed: int = typer.Option(C.SEED, help="Seed for --tune's split of the label groups."),
    out: Path = typer.Option(Path("submission.csv"), help="posting_id,matches as the competition's submission."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Match --data's listings (new ones) against this Kaggle-layout folder's listings instead of among themselves; its embeddings are cached."),
    catalog_csv: str = typer.Option("train.csv", help="The CSV inside --catalog."),
) -> None:
    """Match postings of the same product; write the submission file; print F1 when label_group is known.

    With --catalog, each listing of --data gets its matches among the catalogue's listings instead."""
    from .data.table import ID
    from .matching import match_postings, refuse_with_catalog, settings_for, source_line, write_submission

    if catalog is not None:
        refuse_with_catalog(embeddings=embeddings, tune=tune, phash=phash, titles=titles)
        _match_catalog(data, csv, catalog, catalog_csv, model, arch, weights, threshold, min2, blend, k, index, out)
        return
    settings, source = settings_for(model, threshold, min2, blend)
    table, result = match_postings(data, csv, model, arch, weights, embeddings, settings, tune, phash, titles,
                                   title_threshold, k, seed, index)
    if result.tuned:
        typer.echo(f"{result.settings.line()} tuned on half the label groups: {result.tuned[0].line()}; "
                   f"on the other half: {result.tuned[1].line()}")
    else:
        typer.echo(f"matching at {result.settings.line()} ({source})")
    if embeddings is None:
        typer.echo(f"with the {source_line(model, arch)}")
    write_submission(out, table[ID], result.matches)
    if result.score:
        typer.echo(f"all {len(table)} postings: {result.score.line()}")
    typer.echo(f"submission: {out}")


def _match_catalog(data, csv, catalog, catalog_csv, model, arch, weights, threshold, min2, blend, k, index, out) -> None:
    from .matching import match_new_listings, settings_for, source_line, write_catalog_matches

    settings, source = settings_for(model, threshold, min2, blend)
    result = match_new_listings(data, catalog, model, settings, csv, catalog_csv, arch, weights, k, index)
    write_catalog_matches(out, result)
    matched = sum(bool(m) for m in result.matches)
    typer.echo(f"matching at {result.settings.line()} ({source}), with the {source_line(model, arch)}")
    typer.echo(f"{len(result.new)} new listing(s) against {len(result.catalog)} in {catalog}: {matched} matched one or more")
    if result.score:
        typer.echo(f"against the catalogue's label groups: {result.score.line()}")
    typer.echo(f"matches: {out}")


@command
def serve(
    model: Optional[Path] = typer.Option(None, "--model", help="models/<name>.pkl, .safetensors or .onnx (the last two load without unpickling)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Kaggle-layout folder of listings to find matches in (embedded once, cached)."),
    audit: Optional[Path] = typer.Option(None, "--audit", help="An `audit --out` folder: adds a Review tab whose buttons write its fixes.csv (no --model needed)."),
    host: str = typer.Option(C.SERVE_HOST, help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(C.SERVE_PORT, help="Port to listen on."),
) -> None:
    """A web page (classify photos; find matching listings with --catalog; review an audit with --audit) and a JSON API on one server."""
    from .app import serve as run

    run(model, catalog, audit, host, port, typer.echo)


@command
def sample(dest: Path = typer.Argument(Path("shopee-sample"), help="Folder to create.")) -> None:
    """Copy the bundled sample (real grocery photos, MIT licence) to DEST, in Kaggle layout."""
    from .data.table import copy_sample

    if not copy_sample(dest):
        typer.echo(f"sample already in {dest}")
        return
    typer.echo(f"sample copied to {dest}: train with `shopee-fastai train --data {dest} --arch {C.OFFLINE_ARCH} --pretrained`")


@command
def demo(
    dest: Path = typer.Argument(Path("shopee-sample"), help="Folder for the sample (created if missing)."),
    models_dir: Path = OPTIONS["models_dir"][1],
) -> None:
    """The whole job on the bundled sample: copy it, train the default recipe offline, evaluate, predict one photo."""
    from .artifacts import ModelFiles
    from .data.table import IMAGE, copy_sample, read_table
    from .evaluation import evaluate as run_evaluation
    from .inference.load import load_predictor
    from .training import train as run_training

    typer.echo(f"1/4 sample: {dest} ({'copied' if copy_sample(dest) else 'already there'})")
    typer.echo(f"2/4 train: --arch {C.OFFLINE_ARCH} --pretrained (ImageNet weights installed with the package)")
    card = run_training(C.TrainConfig(data=dest, arch=C.OFFLINE_ARCH, pretrained=True, models_dir=models_dir))
    files = ModelFiles.of(models_dir, card.name)
    _report_card(card, files)
    typer.echo("3/4 evaluate on the held-out test split")
    _print_evaluation(run_evaluation(files.pkl), None, False)
    photo = dest / "train_images" / read_table(dest)[IMAGE].iloc[0]
    typer.echo(f"4/4 predict {photo}")
    _print_predictions(load_predictor(files.pkl), [photo], 3, False, C.PREDICT_BS)
    typer.echo(f"done: model {files.pkl}, card {files.card}, curves {files.curves}, weights {files.safetensors}, ONNX graph {files.onnx}; "
               f"next: `shopee-fastai predict --model {files.pkl} PHOTO.jpg`")


@command
def doctor(as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Versions, CPU model and instruction sets, usable cores and threads, GPU, ONNX Runtime providers, cache folder:
    paste it into a bug report."""
    from .machine import format_report, report

    r = report()
    typer.echo(json.dumps(r) if as_json else format_report(r))


def main() -> None:
    pin_threads()  # before anything imports torch
    app()
