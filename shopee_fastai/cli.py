"""The `shopee-fastai` command: a thin typer layer over the library. Heavy imports happen inside commands."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .errors import ShopeeError
from .head import BODY_LR, HEAD_EPOCHS, HEAD_VIEWS, LABEL_SMOOTHING, TOP_STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sort product photos into their label group with fastai + timm (Kaggle Shopee layout).")

DataOpt = typer.Option(..., "--data", help="Folder with train.csv and train_images/ (Kaggle layout).")
ModelOpt = typer.Option(..., "--model", help="An exported learner, models/<name>.pkl.")


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


def _train_config(data: Path, arch: str, pretrained: bool, weights: Optional[Path], top_groups: int,
                  holdout: Optional[str], split: str, dup_threshold: float, seed: int, size: int, bs: int, aug: str,
                  workers: Optional[int], **extra):
    from .train import TrainConfig

    return TrainConfig(data=data, arch=arch, pretrained=pretrained, weights=weights, top_groups=top_groups,
                       holdout=holdout, split=split, dup_threshold=dup_threshold, seed=seed, size=size, bs=bs,
                       aug=aug, workers=workers, **extra)


# Options shared by train and lr-find, declared once.
ArchOpt = typer.Option("efficientnet_b0", help="'cnn' (the study's hand-written CNN) or any timm model name.")
PretrainedOpt = typer.Option(False, "--pretrained/--scratch", help="Start from ImageNet weights (see --weights).")
WeightsOpt = typer.Option(None, help="Local .pth/.safetensors state dict; implies --pretrained.")
TopOpt = typer.Option(21, help="Keep the N largest label groups (0 keeps all).")
HoldoutOpt = typer.Option(None, help="Regex: posting_ids that match form the test split (e.g. '^val_').")
SplitOpt = typer.Option("leak-free", help="leak-free: near-duplicate clusters stay in one split; random: the study's split.")
ThresholdOpt = typer.Option(0.85, help="Cosine similarity from which two photos of a group count as near-duplicates.")
SeedOpt = typer.Option(42, help="Seed for the split and initialisation.")
SizeOpt = typer.Option(224, help="Image side in pixels.")
BsOpt = typer.Option(32, help="Batch size.")
AugOpt = typer.Option("fastai", help="Batch augmentation: fastai | strong | study | none.")
WorkersOpt = typer.Option(None, help="DataLoader worker processes (default: 0 on CPU, fastai's one per core with a GPU).")
ModelsDirOpt = typer.Option(Path("models"), help="Where the exported model and its files go.")
NameOpt = typer.Option(None, help="Model name (default: <arch>-pretrained or <arch>-scratch).")
PrecisionOpt = typer.Option("auto", help="auto (mixed bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (CUDA only).")


@command
def train(
    data: Path = DataOpt, arch: str = ArchOpt, pretrained: bool = PretrainedOpt, weights: Optional[Path] = WeightsOpt,
    epochs: Optional[int] = typer.Option(None, help="Epochs; unfrozen epochs when pretrained (default 5; 0 after --recipe features)."),
    freeze_epochs: int = typer.Option(1, help="Epochs with the pretrained body frozen first."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate (default 2e-3 Adam, 1e-2 SGD)."),
    wd: Optional[float] = typer.Option(None, help="Weight decay (default: fastai's 0.01)."),
    opt: str = typer.Option("adam", help="Optimizer: adam | sgd."),
    recipe: str = typer.Option("features", help="features: head on cached frozen-body features, then --epochs unfrozen; fine-tune: fastai's frozen then unfrozen."),
    head_epochs: Optional[int] = typer.Option(None, help=f"Epochs of the head phase (--recipe features; default {HEAD_EPOCHS[False]}, or {HEAD_EPOCHS[True]} when body stages train with it)."),
    label_smoothing: float = typer.Option(LABEL_SMOOTHING, help="Label smoothing of the head phase (--recipe features)."),
    top_stages: Optional[int] = typer.Option(None, help=f"Last body stages that train with the head on cached maps (--recipe features; default {TOP_STAGES} for EfficientNet-style bodies, else 0: head only)."),
    body_lr: float = typer.Option(BODY_LR, help="Learning rate of those stages."),
    mixup: float = typer.Option(0.0, help="Mixup of the head phase's cached inputs: Beta(a, a) mixing weight (0: off)."),
    head_views: Optional[int] = typer.Option(None, help=f"Cached views of each training image in the head phase: 1 itself, 2 and its mirror, more add random passes through the training augmentations (--aug; with none, only random crops) (default {HEAD_VIEWS[True]} when body stages train, else {HEAD_VIEWS[False]})."),
    checkpoint_every: int = typer.Option(0, help="Save model and optimizer every N epochs (0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same --name and options."),
    early_stop: int = typer.Option(0, help="Stop after N epochs without a lower valid loss (0: never)."),
    keep_best: bool = typer.Option(False, "--keep-best", help="Keep the epoch with the lowest valid loss."),
    top_groups: int = TopOpt, holdout: Optional[str] = HoldoutOpt, split: str = SplitOpt,
    dup_threshold: float = ThresholdOpt, seed: int = SeedOpt, size: int = SizeOpt,
    bs: int = BsOpt, aug: str = AugOpt, workers: Optional[int] = WorkersOpt, name: Optional[str] = NameOpt,
    models_dir: Path = ModelsDirOpt, precision: str = PrecisionOpt,
) -> None:
    """Fine-tune (or train from scratch) and export models/<name>.pkl with its split and model card."""
    from .train import model_paths, world
    from .train import train as run

    cfg = _train_config(data, arch, pretrained, weights, top_groups, holdout, split, dup_threshold, seed, size, bs,
                        aug, workers,
                        epochs=epochs, freeze_epochs=freeze_epochs, lr=lr, wd=wd, opt=opt, name=name,
                        models_dir=models_dir, recipe=recipe, head_epochs=head_epochs, label_smoothing=label_smoothing,
                        top_stages=top_stages, body_lr=body_lr, head_views=head_views, mixup=mixup,
                        checkpoint_every=checkpoint_every, resume=resume, early_stop=early_stop, keep_best=keep_best,
                        precision=precision)
    card = run(cfg)
    if world()[0]:
        return  # data-parallel: rank 0 reports and exports
    paths = model_paths(models_dir, card["name"])
    typer.echo(f"weights: {card['weights']}")
    if card["leaks"]:
        from .neardup import LeakReport

        typer.echo(f"split: leak-free; {LeakReport(**card['leaks']).line()}")
    typer.echo(f"valid accuracy {card['valid_accuracy']}  test accuracy {card['test_accuracy']}  "
               f"({card['split']['test']} test images, {card['wall_time_s']['total']} s)")
    typer.echo(f"exported {paths['pkl']} (card {paths['card']}, split {paths['split']})")


@command
def lr_find(
    data: Path = DataOpt, arch: str = ArchOpt, pretrained: bool = PretrainedOpt, weights: Optional[Path] = WeightsOpt,
    opt: str = typer.Option("adam", help="Optimizer: adam | sgd."),
    top_groups: int = TopOpt, holdout: Optional[str] = HoldoutOpt, split: str = SplitOpt,
    dup_threshold: float = ThresholdOpt, seed: int = SeedOpt, size: int = SizeOpt,
    bs: int = BsOpt, aug: str = AugOpt, workers: Optional[int] = WorkersOpt, name: Optional[str] = NameOpt,
    models_dir: Path = ModelsDirOpt, precision: str = PrecisionOpt,
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default models/<name>.lr_find.png)."),
) -> None:
    """Run fastai's learning-rate range test; print the valley/slide/minimum/steep suggestions and save the plot."""
    from .train import lr_find as run
    from .train import model_paths

    cfg = _train_config(data, arch, pretrained, weights, top_groups, holdout, split, dup_threshold, seed, size, bs,
                        aug, workers,
                        opt=opt, name=name, models_dir=models_dir, precision=precision)
    found = run(cfg, plot)
    for k, v in found.items():
        typer.echo(f"{k:8s} {v:.2e}")
    typer.echo(f"plot: {plot or model_paths(models_dir, cfg.model_name)['lr_find']}")


@command
def compare(
    data: Path = DataOpt, seeds: int = typer.Option(1, help="Repeat over this many seeds; mean ± sd."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per model (default 5; unfrozen epochs of the pretrained row, 0 after --recipe features)."),
    freeze_epochs: int = typer.Option(1, help="Frozen epochs for the pretrained model."),
    recipe: str = typer.Option("features", help="Recipe of the pretrained row: features | fine-tune."),
    weights: Optional[Path] = typer.Option(None, help="Local EfficientNet-B0 weights for the pretrained row."),
    top_groups: int = TopOpt, holdout: Optional[str] = HoldoutOpt, split: str = SplitOpt,
    dup_threshold: float = ThresholdOpt, seed: int = SeedOpt, size: int = SizeOpt, bs: int = BsOpt,
    aug: str = AugOpt, workers: Optional[int] = WorkersOpt, models_dir: Path = ModelsDirOpt,
    out: Path = typer.Option(Path("reports/compare"), help="Folder for table.md, runs.csv and accuracy.png."),
) -> None:
    """Hand CNN (with/without augmentation), EfficientNet-B0 from scratch and pretrained, on one split; table + chart."""
    from .compare import compare as run

    cfg = _train_config(data, "efficientnet_b0", False, weights, top_groups, holdout, split, dup_threshold, seed, size,
                        bs, aug, workers, epochs=epochs, freeze_epochs=freeze_epochs, models_dir=models_dir,
                        recipe=recipe)
    table = run(cfg, seeds, out)
    for r in table.itertuples():
        typer.echo(f"{r.model:36s} test {r.test:15s} valid {r.valid:15s} {r.params / 1e6:5.2f} M params  {r.wall_s:6.0f} s")
    typer.echo(f"table: {out / 'table.md'}  chart: {out / 'accuracy.png'}")


@command
def evaluate(
    model: Path = ModelOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="Score every row of this Kaggle-layout folder instead of the saved test split (labels optional)."),
    csv: str = typer.Option("train.csv", help="The CSV inside --data."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default reports/<model>-test or reports/<model>-<data>)."),
) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall/F1, confusion and top-losses PNGs, predictions CSV."""
    from .evaluate import evaluate as run

    r = run(model, data, csv, tta, out)
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
def predict(
    images: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    model: Path = typer.Option(..., "--model", help="models/<name>.pkl (fastai learner), .safetensors (weights only, no pickle) or .onnx (from export-onnx)."),
    top_k: int = typer.Option(5, "--top-k", help="How many label groups to show per image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
    bs: int = typer.Option(32, help="Batch size."),
    backend: str = typer.Option("auto", help="auto (onnx where onnxruntime is installed, else torch) | onnx | torch | fastai (the learner's get_preds)."),
    precision: str = typer.Option("auto", help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (CPU: only with native bf16) | fp16 (CUDA)."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation (fastai's, 5 passes: slower, usually more accurate; .pkl only)."),
) -> None:
    """Top-k label groups with probabilities for each image; unreadable images are reported and give exit code 2."""
    from .predict import collect_images, load_predictor, top_k as best

    files = collect_images(images)
    predictor = load_predictor(model, backend, precision, tta)
    preds = predictor.probs(files, bs=bs, progress=not as_json)
    for path, ranked in zip(preds.paths, best(preds.probs, predictor.vocab, top_k)):
        if as_json:
            typer.echo(json.dumps({"image": str(path), "predictions": ranked}))
        else:
            typer.echo(f"{path}\t" + "  ".join(f"{r['label_group']} {r['probability']:.3f}" for r in ranked))
    if preds.failures:
        for line in preds.failures:
            typer.echo(f"error: {line}", err=True)
        raise ShopeeError(f"{len(preds.failures)} of {len(files)} image(s) could not be read (listed above); fix or remove them")


@command
def export_onnx(
    model: Path = typer.Option(..., "--model", help="models/<name>.pkl or .safetensors."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default: the model's path with .onnx)."),
) -> None:
    """Write the model as ONNX (uint8 NHWC images in, probabilities out, config in its metadata) for onnxruntime."""
    from .infer import export_onnx as run
    from .predict import load_model
    from .safe import SUFFIX, learner_config, load_safe

    if Path(model).suffix == SUFFIX:
        net, cfg = load_safe(model)
    else:
        learn = load_model(model, cpu=True)
        net, cfg = learn.model, learner_config(learn)
    dest = run(net, cfg, out or Path(model).with_suffix(".onnx"))
    typer.echo(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB); predict with `shopee-fastai predict --model {dest} IMAGES`")


@command
def eda(
    data: Path = DataOpt,
    out: Path = typer.Option(Path("reports/eda"), help="Folder for report.md, summary.json and the PNG figures."),
    max_images: int = typer.Option(2000, help="Read the headers of at most this many images (a seeded sample)."),
) -> None:
    """Study a data set: groups, duplicates, phash and title groups, image sizes; Markdown report + PNG figures."""
    from .eda import eda as run
    from .eda import format_summary

    typer.echo(format_summary(run(data, out, max_images=max_images)))


@command
def prepare(
    data: Path = DataOpt, size: int = SizeOpt,
    top_groups: int = typer.Option(0, help="Only the N largest label groups (0: every image in the CSV)."),
) -> None:
    """Pre-resize every image once (shorter side to --size) into the cache that train, lr-find and predict use."""
    from .cache import images_root
    from .cache import prepare as run
    from .data import PATH, clean, read_table

    table = clean(read_table(data), top_groups)
    result = run(list(table[PATH]), size)
    typer.echo(f"{result.written} written, {result.reused} already prepared, {len(result.failed)} unreadable; "
               f"cache {images_root() / f's{size}'}")
    for line in list(result.failed.values())[:20]:
        typer.echo(f"warning: {line}", err=True)


@command
def split(
    data: Path = DataOpt, top_groups: int = TopOpt, dup_threshold: float = ThresholdOpt, seed: int = SeedOpt,
    holdout: Optional[str] = HoldoutOpt,
    out: Optional[Path] = typer.Option(None, help="Write the leak-free split (posting_id,split) to this CSV."),
) -> None:
    """Find near-duplicate clusters and report what a plain random split would leak; optionally save the leak-free split."""
    from . import data as D
    from .neardup import DEFAULT_EMBED_ARCH, clusters, embeddings_for, leak_report, leaked

    table = D.clean(D.read_table(data), top_groups)
    table = D.drop_unreadable(table)[0]
    ids = clusters(table, embeddings_for(list(table[D.PATH]), DEFAULT_EMBED_ARCH), dup_threshold)
    typer.echo(leak_report(table, ids, seed).line())
    safe = D.make_split(table, seed, holdout=holdout, clusters=ids)
    sizes = ", ".join(f"{n} {int((safe == n).sum())}" for n in D.SPLITS)
    typer.echo(f"leak-free split: {sizes}; test images beside a twin in training: {leaked(safe, table, ids)}")
    if out:
        D.write_split(safe, out)
        typer.echo(f"written {out}")


def _embeddings(table, model: Optional[Path], arch: str, weights: Optional[Path]):
    from .data import PATH
    from .embed import embed_paths, learner_embed
    from .predict import load_model

    paths = list(table[PATH])
    return learner_embed(load_model(model), paths) if model else embed_paths(paths, arch, weights)


EmbedModelOpt = typer.Option(None, "--model", help="Embed with this trained learner's body (default: a pretrained backbone).")
EmbedArchOpt = typer.Option("tf_efficientnet_lite0", help="Pretrained backbone when no --model is given.")
CsvOpt = typer.Option("train.csv", help="The CSV inside --data (test.csv for Kaggle's test set).")


@command
def embed(
    data: Path = DataOpt, csv: str = CsvOpt, model: Optional[Path] = EmbedModelOpt, arch: str = EmbedArchOpt,
    weights: Optional[Path] = WeightsOpt,
    out: Path = typer.Option(Path("embeddings.npy"), help="Where to write the [rows, dim] float32 array (CSV row order)."),
) -> None:
    """L2-normalised image embeddings of every row of the CSV, from a trained learner or a pretrained backbone."""
    import numpy as np

    from .data import read_table
    from .io import atomic_path

    table = read_table(data, csv, labels=False)
    emb = _embeddings(table, model, arch, weights)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    typer.echo(f"{emb.shape[0]} embeddings of {emb.shape[1]} dims written to {out}")


@command
def match(
    data: Path = DataOpt, csv: str = CsvOpt, model: Optional[Path] = EmbedModelOpt, arch: str = EmbedArchOpt,
    weights: Optional[Path] = WeightsOpt,
    embeddings: Optional[Path] = typer.Option(None, help="Use embeddings saved by `embed` instead of computing them."),
    threshold: float = typer.Option(0.6, help="Cosine similarity from which two postings match."),
    tune: bool = typer.Option(False, "--tune", help="Pick the threshold on half the label groups; report F1 on the rest."),
    min2: bool = typer.Option(False, "--min2", help="Keep the nearest neighbour when nothing else passes."),
    phash: bool = typer.Option(False, "--phash", help="Also match postings with identical image_phash."),
    titles: bool = typer.Option(False, "--titles", help="Also match title TF-IDF neighbours."),
    title_threshold: float = typer.Option(0.75, help="Cosine similarity for title matches."),
    k: int = typer.Option(50, help="Neighbours searched per posting (at most 50)."),
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("submission.csv"), help="posting_id,matches as the competition's submission."),
) -> None:
    """Match postings of the same product; write the submission file; print F1 when label_group is known."""
    import numpy as np

    from .data import ID, read_table
    from .match import match_table, write_submission

    table = read_table(data, csv, labels=False)
    if embeddings:
        if not embeddings.is_file():
            raise ShopeeError(f"--embeddings {embeddings}: file not found; write it with `shopee-fastai embed`")
        emb = np.load(embeddings)
    else:
        emb = _embeddings(table, model, arch, weights)
    result = match_table(table, emb, threshold, tune, min2, phash, titles, title_threshold, k, seed)
    if result.tuned:
        typer.echo(f"threshold {result.threshold:.3f} tuned on half the label groups: {result.tuned[0].line()}; "
                   f"on the other half: {result.tuned[1].line()}")
    write_submission(out, table[ID], result.matches)
    if result.score:
        typer.echo(f"all {len(table)} postings at threshold {result.threshold:.3f}: {result.score.line()}")
    typer.echo(f"submission: {out}")


@command
def sample(dest: Path = typer.Argument(Path("shopee-sample"), help="Folder to create.")) -> None:
    """Copy the bundled sample (real grocery photos, MIT licence) to DEST, in Kaggle layout."""
    from .data import SAMPLE_DIR

    if (dest / "train.csv").is_file() and (dest / "train.csv").read_bytes() == (SAMPLE_DIR / "train.csv").read_bytes():
        typer.echo(f"sample already in {dest}")
        return
    if dest.exists():
        raise ShopeeError(f"{dest}: already exists and is not the sample; choose a new folder")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SAMPLE_DIR, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    tmp.rename(dest)  # all or nothing
    typer.echo(f"sample copied to {dest}: train with `shopee-fastai train --data {dest} --arch tf_efficientnet_lite0 --pretrained`")


def main() -> None:
    app()
