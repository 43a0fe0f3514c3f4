"""Training: clean and split the data, build the learner, fine-tune it, and export it with its model card."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import data as D
from .errors import ShopeeError
from .embed import DEFAULT_EMBED_ARCH
from .head import BODY_LR, LABEL_SMOOTHING
from .neardup import DEFAULT_THRESHOLD
from .models import CNN_ARCH, DEFAULT_ARCH, HandCNN, check_arch, input_stats
from .weights import WeightsChoice, resolve_weights, weights_load_error

DEFAULT_LR = {"adam": 2e-3, "sgd": 1e-2}
OPTIMIZERS = tuple(DEFAULT_LR)
SGD_MOMENTUM = 0.9
LR_MULT = 100  # discriminative learning rates after unfreezing: the stem learns 100x slower than the head
UNFROZEN_DIV = 5  # fastai fine_tune's one-cycle settings for the unfrozen phase
UNFROZEN_PCT_START = 0.3
FROZEN_PCT_START = 0.99
MODELS_DIR = Path("models")
DEFAULT_EPOCHS = 5
SPLIT_MODES = ("leak-free", "random")
RECIPES = ("fine-tune", "features")
HEAD_WD = 0.01


@dataclass
class TrainConfig:
    data: Path
    arch: str = DEFAULT_ARCH
    pretrained: bool = False
    weights: Path | None = None
    name: str | None = None
    models_dir: Path = MODELS_DIR
    top_groups: int = D.DEFAULT_TOP_GROUPS
    holdout: str | None = None
    seed: int = 42
    size: int = 224
    bs: int = 32
    aug: str = "fastai"
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or 0 unfrozen epochs after the features recipe's head
    freeze_epochs: int = 1
    lr: float | None = None
    wd: float | None = None
    opt: str = "adam"
    workers: int | None = None
    split: str = "leak-free"  # or "random", the study's plain split
    dup_threshold: float = DEFAULT_THRESHOLD
    dup_arch: str = DEFAULT_EMBED_ARCH
    recipe: str = "features"  # head on cached frozen-body features (then --epochs unfrozen), or "fine-tune" (fastai's)
    head_epochs: int | None = None  # None: head.HEAD_EPOCHS (30 for the head alone, 5 with body stages)
    label_smoothing: float = LABEL_SMOOTHING  # of the features recipe's head phase
    top_stages: int | None = None  # last body stages trained with the head on cached maps (None: head.TOP_STAGES where the body allows)
    body_lr: float = BODY_LR  # their learning rate
    head_views: int | None = None  # cached views of each training image in the head phase (None: head.HEAD_VIEWS)
    mixup: float = 0.0  # Beta(a, a) mixup of the head phase's cached inputs (0: off)
    checkpoint_every: int = 0  # save model + optimizer every N epochs of a fastai phase (0: never)
    early_stop: int = 0  # stop a fastai phase after N epochs without a lower valid loss (0: never)
    keep_best: bool = False  # end each fastai phase with the weights of its lowest valid loss
    resume: bool = False  # continue from the checkpoint of the same --name, with the same schedule
    score_train: bool = False  # also score the training images (compare reports it: a gap shows overfitting)
    precision: str = "auto"  # accel.PRECISIONS: mixed precision on CUDA, fp32 on CPU unless bf16 is asked for

    @property
    def n_epochs(self) -> int:
        """--epochs, or its default: 5, but none unfrozen after the features recipe's head."""
        if self.epochs is not None:
            return self.epochs
        features = self.recipe == "features" and (self.pretrained or self.weights) and self.arch != CNN_ARCH
        return 0 if features else DEFAULT_EPOCHS

    @property
    def model_name(self) -> str:
        return self.name or f"{self.arch}-{'pretrained' if self.pretrained or self.weights else 'scratch'}"

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.opt]

    def check(self) -> None:
        """Reject bad options before any data is read or any time spent."""
        check_arch(self.arch)
        if self.opt not in OPTIMIZERS:
            raise ShopeeError(f"--opt {self.opt!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.recipe not in RECIPES:
            raise ShopeeError(f"--recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        if self.split not in SPLIT_MODES:
            raise ShopeeError(f"--split {self.split!r}: choose one of {', '.join(SPLIT_MODES)}")
        if self.aug not in D.AUGMENTATIONS:
            raise ShopeeError(f"--aug {self.aug!r}: choose one of {', '.join(D.AUGMENTATIONS)}")
        if self.mixup < 0:
            raise ShopeeError(f"--mixup {self.mixup}: must be 0 (off) or positive")
        if not 0 <= self.label_smoothing < 1:
            raise ShopeeError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        for opt, value, low in (("--size", self.size, 8), ("--bs", self.bs, 1), ("--epochs", self.n_epochs, 0),
                                ("--early-stop", self.early_stop, 0), ("--checkpoint-every", self.checkpoint_every, 0),
                                ("--freeze-epochs", self.freeze_epochs, 0), ("--top-groups", self.top_groups, 0),
                                ("--top-stages", self.top_stages or 0, 0), ("--head-epochs", self.head_epochs or 0, 0),
                                ("--head-views", 1 if self.head_views is None else self.head_views, 1)):
            if value < low:
                raise ShopeeError(f"{opt} {value}: must be at least {low}")
        import torch

        from .infer import resolve_precision

        resolve_precision(self.precision, torch.cuda.is_available())
        try:  # fail before training, not at export time
            Path(self.models_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ShopeeError(f"--models-dir {self.models_dir}: cannot create it ({e.strerror}); choose a writable folder") from e
        if self.arch == CNN_ARCH and (self.pretrained or self.weights):
            raise ShopeeError("--arch cnn has no pretrained weights; drop --pretrained/--weights or pick a timm arch")


@dataclass
class Prepared:
    """The cleaned table (readable images only), its split and what was skipped."""

    table: pd.DataFrame
    split: pd.Series
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)
    cached: int = 0
    leaks: Any = None  # neardup.LeakReport for leak-free splits

    def rows(self, name: str) -> pd.DataFrame:
        return D.rows_in_split(self.table, self.split, name).assign(**{D.SPLIT: name})


def prepare(cfg: TrainConfig, skipped_report: Path | None = None) -> Prepared:
    from .cache import use_cache

    table = D.clean(D.read_table(cfg.data), cfg.top_groups)
    table[D.PATH], hits = use_cache(table[D.PATH], cfg.size)  # prepared images where `shopee-fastai prepare` made them
    table, skipped = D.drop_unreadable(table, skipped_report)
    if len(table) < D.MIN_TRAIN_IMAGES or table[D.LABEL].nunique() < 2:
        raise ShopeeError(f"{cfg.data}: fewer than 2 label groups with readable images; add images or raise --top-groups")
    leaks = ids = None
    if cfg.split == "leak-free":
        from .neardup import clusters, embeddings_for, leak_report

        ids = clusters(table, embeddings_for(list(table[D.PATH]), cfg.dup_arch), cfg.dup_threshold)
        leaks = leak_report(table, ids, cfg.seed)
    split = D.make_split(table, cfg.seed, holdout=cfg.holdout, clusters=ids)
    for name in (D.VALID, D.TEST):
        if not (split == name).any():
            why = (f"each group's photos are near-duplicates of each other at --dup-threshold {cfg.dup_threshold}; "
                   "raise it, add photos, or use --split random") if ids is not None else "every group has fewer than 3 photos; add photos"
            raise ShopeeError(f"{cfg.data}: the {cfg.split} split left no {name} images ({why})")
    return Prepared(table, split, skipped, hits, leaks)


def build_learner(dls, cfg: TrainConfig, choice: WeightsChoice):
    """A fastai Learner for `cfg.arch`: the hand CNN, or a timm model through `vision_learner` (frozen if pretrained)."""
    from functools import partial

    import fastai.callback.progress  # noqa: F401  (registers the progress bars)
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.optimizer import SGD, Adam
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner

    from .accel import configure

    set_seed(cfg.seed, reproducible=True)
    opt_func = Adam if cfg.opt == "adam" else partial(SGD, mom=SGD_MOMENTUM)
    common: dict[str, Any] = dict(loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=opt_func,
                                  path=Path("."), model_dir=".")
    if cfg.wd is not None:
        common["wd"] = cfg.wd
    if cfg.arch == CNN_ARCH:
        learn = Learner(dls, HandCNN(len(dls.vocab), cfg.size), **common)
    else:
        try:
            # Normalize is already in the DataBlock for every arch, so vision_learner must not add a second one.
            learn = vision_learner(dls, cfg.arch, pretrained=choice.pretrained, normalize=False, **common, **choice.timm_kwargs)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            if choice.pretrained:
                raise weights_load_error(cfg.arch, choice, e) from e
            raise
    learn.precision = configure(learn, cfg.precision)
    return learn


def setup(cfg: TrainConfig, skipped_report: Path | None = None) -> tuple[WeightsChoice, Prepared, Any]:
    """Check options, resolve weights (fail fast), prepare and split the data, and build the learner."""
    cfg.check()
    choice = resolve_weights(cfg.arch, cfg.pretrained, cfg.weights)
    prep = prepare(cfg, skipped_report)
    train_valid = pd.concat([prep.rows(D.TRAIN), prep.rows(D.VALID)], ignore_index=True)
    dls = D.make_dataloaders(train_valid, input_stats(cfg.arch),
                             D.LoaderConfig(cfg.size, cfg.bs, cfg.aug, cfg.workers, cfg.seed))
    return choice, prep, build_learner(dls, cfg, choice)


def _history(learn, phase: str, start: int = 0) -> list[dict[str, Any]]:
    """Per-epoch rows of the Recorder for `phase` from epoch `start` (fastai records skipped epochs as empty rows)."""
    names = learn.recorder.metric_names[1:-1]
    rows = learn.recorder.values[start:]
    return [{"phase": phase, "epoch": start + i, **{n: float(v) for n, v in zip(names, row)}} for i, row in enumerate(rows)]


def fit(learn, cfg: TrainConfig, pretrained: bool) -> tuple[list[dict], dict[str, float]]:
    """Run the recipe's phases (see README: Training recipes), checkpointing and resuming where asked."""
    from .checkpoint import load_checkpoint

    lr = cfg.base_lr

    def one_cycle(**kw):
        return lambda n, start, cbs: learn.fit_one_cycle(n, start_epoch=start, cbs=cbs, **kw)

    def unfrozen(n, start, cbs):
        learn.unfreeze()
        learn.fit_one_cycle(n, slice(lr / 2 / LR_MULT, lr / 2), pct_start=UNFROZEN_PCT_START, div=UNFROZEN_DIV,
                            start_epoch=start, cbs=cbs)

    if pretrained and cfg.recipe == "features":
        phases = [("head", cfg.head_epochs, None), ("unfrozen", cfg.n_epochs, unfrozen)]
    elif pretrained:
        phases = [("frozen", cfg.freeze_epochs, one_cycle(lr_max=slice(lr), pct_start=FROZEN_PCT_START)),
                  ("unfrozen", cfg.n_epochs, unfrozen)]
    else:
        phases = [("scratch", cfg.n_epochs, one_cycle(lr_max=lr))]
    phases = [p for p in phases if p[1]]
    names = [p[0] for p in phases]
    resumed = load_checkpoint(learn, cfg.models_dir, cfg.model_name) if cfg.resume else None
    if resumed and resumed["phase"] not in names:
        raise ShopeeError(f"--resume: the checkpoint is in phase {resumed['phase']!r}, which these options do not run; "
                          "resume with the options it was trained with")
    history: list[dict] = list(resumed["history"]) if resumed else []
    times: dict[str, float] = {}
    with distributed(learn):
        _run_phases(learn, cfg, phases, names, resumed, history, times, lr)
    return history, times


def world() -> tuple[int, int]:
    """(rank, number of processes) under `accelerate launch`/torchrun; (0, 1) otherwise."""
    from fastai.torch_core import num_distrib, rank_distrib

    return rank_distrib(), max(1, num_distrib())


@contextlib.contextmanager
def distributed(learn):
    """Data-parallel training through fastai's Accelerate integration when launched on several processes."""
    rank, n = world()
    if n == 1:
        yield
        return
    import fastai.distributed
    import torch

    def broadcast(self, t, src):  # fastai's moves this to CUDA, which gloo on a CPU-only machine cannot take
        t = torch.LongTensor(t).to("cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.broadcast(t, src)
        return t.cpu().tolist()

    fastai.distributed.DistributedDL._broadcast = broadcast

    with learn.distrib_ctx(sync_bn=False, cpu=not torch.cuda.is_available()):  # gloo on CPU-only machines
        yield
    total = sum(float(p.detach().double().sum()) for p in learn.model.parameters())
    # Equal on every rank when gradients were synchronised. The ranks share one stdout: flush what is buffered first,
    # so that this line goes out in one write of its own (atomic on a pipe) and is never cut by the other rank's output.
    sys.stdout.flush()
    print(f"rank {rank}/{n}: weights checksum {total:.10e}", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _stopping_callbacks(cfg: TrainConfig) -> list:
    """fastai's EarlyStoppingCallback and SaveModelCallback (best epoch by valid loss, reloaded at the phase's end)."""
    from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback

    cbs: list = []
    if cfg.early_stop:
        cbs.append(EarlyStoppingCallback(monitor="valid_loss", patience=cfg.early_stop))
    if cfg.keep_best:
        cbs.append(SaveModelCallback(monitor="valid_loss", fname=str(Path(cfg.models_dir) / f"{cfg.model_name}.best"),
                                     with_opt=False))
    return cbs


def _run_phases(learn, cfg: TrainConfig, phases, names: list[str], resumed, history: list[dict],
                times: dict[str, float], lr: float) -> None:
    from .checkpoint import Checkpoint

    for phase, n, run in phases:
        start_epoch = 0
        if resumed:
            at = names.index(resumed["phase"])
            if names.index(phase) < at:
                continue  # its result is in the checkpoint's weights
            if phase == resumed["phase"]:
                start_epoch = resumed["epochs_done"]
                if start_epoch >= n:
                    continue
        start = time.perf_counter()
        if phase == "head":
            from .head import fit_head

            history += fit_head(learn, n, lr, cfg.wd or HEAD_WD, cfg.seed, cfg.label_smoothing, cfg.top_stages, cfg.body_lr,
                                cfg.head_views, cfg.mixup)
        else:
            cbs = [Checkpoint(cfg.models_dir, cfg.model_name, phase, cfg.checkpoint_every, list(history), start_epoch)] \
                if cfg.checkpoint_every else []
            cbs += _stopping_callbacks(cfg)
            run(n, start_epoch, cbs)
            history += _history(learn, phase, start_epoch)
        times[phase] = round(time.perf_counter() - start, 1)


def versions() -> dict[str, str]:
    import fastai
    import timm
    import torch

    from . import __version__

    return {"shopee_fastai": __version__, "fastai": fastai.__version__, "timm": timm.__version__, "torch": torch.__version__}


def model_paths(models_dir: Path, name: str) -> dict[str, Path]:
    """Every file a trained model consists of; `evaluate` and `predict` find the rest from the .pkl's path."""
    base = Path(models_dir) / name
    return {"pkl": base.with_suffix(".pkl"), "card": base.with_suffix(".json"),
            "split": Path(f"{base}.split.csv"), "skipped": Path(f"{base}.skipped.csv"),
            "lr_find": Path(f"{base}.lr_find.png"), "curves": Path(f"{base}.curves.png"),
            "safe": base.with_suffix(".safetensors")}


@dataclass
class Trained:
    """A fitted learner with its model card, before export."""

    learn: Any
    card: dict[str, Any]
    prep: Prepared
    paths: dict[str, Path]


def fit_learner(cfg: TrainConfig) -> Trained:
    """Everything `train` does except writing the model: prepare data, build, fit, score valid and test."""
    from .evaluate import accuracy_on

    paths = model_paths(cfg.models_dir, cfg.model_name)
    started = time.perf_counter()
    choice, prep, learn = setup(cfg, paths["skipped"])
    if choice.pretrained and cfg.recipe == "features":
        from .head import resolve

        cfg = replace(cfg, **resolve(learn.model, cfg.top_stages, cfg.head_epochs, cfg.head_views))  # the card records what ran
    mean, std = input_stats(cfg.arch)
    dls = learn.dls
    history, times = fit(learn, cfg, choice.pretrained)
    card = {
        "name": cfg.model_name, "arch": cfg.arch, "weights": choice.source, "classes": [str(c) for c in dls.vocab],
        "input": {"size": cfg.size, "mean": list(mean), "std": list(std)},
        "data": str(Path(cfg.data).resolve()), "config": {**{k: v for k, v in asdict(cfg).items() if k != "data"}, "epochs": cfg.n_epochs},
        "split": {"mode": cfg.split, "seed": cfg.seed, "holdout": cfg.holdout, "file": paths["split"].name,
                  **{s: int((prep.split == s).sum()) for s in D.SPLITS}},
        "leaks": asdict(prep.leaks) if prep.leaks else None,
        "precision": learn.precision, "skipped_images": len(prep.skipped), "cached_images": prep.cached, "history": history,
        "params": int(sum(p.numel() for p in learn.model.parameters())),
        "images_per_s": round(len(learn.dls.train_ds) * sum(cfg.head_views if h["phase"] == "head" else 1 for h in history)
                               / max(sum(times.values()), 1e-9), 1),  # a head epoch passes every cached view
        "train_accuracy": accuracy_on(learn, prep.rows(D.TRAIN)) if cfg.score_train else None,
        "valid_accuracy": accuracy_on(learn, prep.rows(D.VALID)),
        "test_accuracy": accuracy_on(learn, prep.rows(D.TEST)),
        "wall_time_s": {"total": round(time.perf_counter() - started, 1), **times}, "versions": versions(),
    }
    return Trained(learn, card, prep, paths)


def export(trained: Trained) -> None:
    """Write split, learner and card, each atomically; the card last, so a card always has its model.

    Under data-parallel training only rank 0 writes.
    """
    if world()[0]:
        return
    from .io import atomic_path, write_json
    from .plots import training_curves
    from .safe import export_safe

    from .checkpoint import remove_checkpoint

    from .accel import strip

    strip(trained.learn)
    D.write_split(trained.prep.split, trained.paths["split"])
    training_curves(trained.paths["curves"], trained.card["history"], f"{trained.card['name']}: training curves")
    with atomic_path(trained.paths["pkl"]) as tmp:
        trained.learn.export(tmp.resolve())
    export_safe(trained.learn, trained.card, trained.paths["safe"])
    write_json(trained.paths["card"], trained.card)
    remove_checkpoint(trained.paths["pkl"].parent, trained.card["name"])  # the model is complete now
    Path(f"{trained.paths['pkl'].with_suffix('')}.best.pth").unlink(missing_ok=True)  # keep-best's scratch file


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train and export `models/<name>.pkl` with its split and model card; return the card."""
    trained = fit_learner(cfg)
    export(trained)
    return trained.card


def lr_find(cfg: TrainConfig, plot: Path | None = None) -> dict[str, float]:
    """fastai's LR range test on the phase `train` starts with (the frozen head if pretrained); plot saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fastai.callback.schedule import minimum, slide, steep, valley

    from .io import atomic_path

    _, _, learn = setup(cfg)
    plt.close("all")
    found = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=True)
    plot = plot or model_paths(cfg.models_dir, cfg.model_name)["lr_find"]
    with atomic_path(plot) as tmp:
        plt.gcf().savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close("all")
    return {k: float(v) for k, v in found._asdict().items()}
