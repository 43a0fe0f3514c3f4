"""From a TrainConfig to a fastai Learner: resolve the settings and the weights, clean and split the data, build."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import fastai.callback.progress  # noqa: F401  (registers the progress bars)
import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)
import pandas as pd
import torch
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam
from fastai.torch_core import set_seed
from fastai.vision.learner import vision_learner

from ..config import CNN_ARCH, VALID_GROUPS, Loss, Optimizer, ResolvedConfig, Split, TrainConfig
from ..data import split as S
from ..data import table as D
from ..data.cache import use_cache
from ..data.loaders import LoaderConfig, make_dataloaders
from ..data.neardup import LeakFreeSplit, leak_free_split
from ..device import resolve_precision
from ..errors import ShopeeError
from ..inference.embed import embeddings_for
from ..nets.body import body_features, body_stages, check_arch, embedding_head, input_stats
from ..nets.cnn import HandCNN
from ..nets.weights import WeightsChoice, resolve_weights, weights_load_error
from .callbacks import configure
from .objective import objective

SGD_MOMENTUM = 0.9


@dataclass
class Prepared:
    """The cleaned table (readable images only), its split and what was skipped."""

    table: pd.DataFrame
    split: pd.Series
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)
    cached: int = 0
    leaks: Any = None  # neardup.LeakReport for leak-free splits
    folds: pd.Series | None = None  # posting_id -> each ensemble member's validation fold (S.member_folds)

    def rows(self, name: str) -> pd.DataFrame:
        return S.rows_in_split(self.table, self.split, name).assign(**{S.SPLIT: name})

    def fold_rows(self, k: int) -> pd.DataFrame:
        """The photos member `k` validates on."""
        return self.table[self.table[D.ID].map(self.folds).eq(k)].reset_index(drop=True)

    def fold_sizes(self, members: int) -> list[int]:
        """Photos in each member's validation fold."""
        return [int(self.folds.eq(k).sum()) for k in range(members)]

    def fold_of_path(self) -> dict[str, int] | None:
        """Each image path's fold, as the cached views know their photos; None without member folds."""
        if self.folds is None:
            return None
        fold = self.table[D.ID].map(self.folds)
        return {str(Path(p)): int(f) for p, f in zip(self.table[D.PATH], fold) if f == f}


def check_environment(cfg: ResolvedConfig) -> None:
    """What TrainConfig cannot check by itself: the precision runs here, models_dir is writable."""
    resolve_precision(cfg.precision, torch.cuda.is_available())
    try:  # fail before training, not at export time
        Path(cfg.models_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShopeeError(f"--models-dir {cfg.models_dir}: cannot create it ({e.strerror}); choose a writable folder") from e


def resolve(cfg: TrainConfig) -> ResolvedConfig:
    """`cfg` with every default worked out for its arch's body: the settings the run uses and its card records."""
    check_arch(cfg.arch)
    return cfg.resolved(body_stages(cfg.arch))


def readable_table(cfg: ResolvedConfig, skipped_report: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The cleaned table's readable rows (prepared images where `shopee-fastai prepare` made them), the rows
    skipped, and how many images came from that cache."""
    table = D.clean(D.read_table(cfg.data), cfg.top_groups)
    table[D.PATH], hits = use_cache(table[D.PATH], cfg.size)
    table, skipped = D.drop_unreadable(table, skipped_report)
    if len(table) < D.MIN_TRAIN_IMAGES or table[D.LABEL].nunique() < 2:
        raise ShopeeError(f"{cfg.data}: fewer than 2 label groups with readable images; add images or raise --top-groups")
    return table, skipped, hits


def leak_free(table: pd.DataFrame, cfg: ResolvedConfig) -> LeakFreeSplit:
    """The leak-free split of `table`: pretrained embeddings of its photos, handed down to the data layer's split."""
    return leak_free_split(table, embeddings_for(list(table[D.PATH])), cfg.dup_threshold, cfg.seed, cfg.holdout)


def split_data(cfg: TrainConfig) -> tuple[pd.DataFrame, LeakFreeSplit]:
    """The leak-free split `train` makes of `cfg.data`, with the table it splits (the `split` command)."""
    run = resolve(cfg)
    table = readable_table(run)[0]
    return table, leak_free(table, run)


def prepare(cfg: ResolvedConfig, skipped_report: Path | None = None, valid_groups: float = VALID_GROUPS) -> Prepared:
    table, skipped, hits = readable_table(cfg, skipped_report)
    if cfg.loss.is_embedding:  # an embedding validates on whole groups it never trains on
        split = S.group_split(table, cfg.seed, valid_groups, holdout=cfg.holdout)
        if not (split == S.TRAIN).any():
            raise ShopeeError(f"{cfg.data}: no training images outside --holdout {cfg.holdout!r}")
        return Prepared(table, split, skipped, hits)
    found = leak_free(table, cfg) if cfg.split == Split.leak_free else None
    split = found.split if found else S.make_split(table, cfg.seed, holdout=cfg.holdout)
    for name in (S.VALID, S.TEST):
        if not (split == name).any():
            why = (f"each group's photos are near-duplicates of each other at --dup-threshold {cfg.dup_threshold}; "
                   "raise it, add photos, or use --split random") if found else "every group has fewer than 3 photos; add photos"
            raise ShopeeError(f"{cfg.data}: the {cfg.split} split left no {name} images ({why})")
    folds = S.member_folds(table, split, cfg.ensemble, cfg.seed, found.clusters if found else None) if cfg.member_folds else None
    return Prepared(table, split, skipped, hits, found.leaks if found else None, folds)


def build_learner(dls, cfg: ResolvedConfig, choice: WeightsChoice):
    """A fastai Learner for `cfg.arch`: the hand CNN, or a timm model through `vision_learner` (frozen if pretrained)."""
    set_seed(cfg.seed, reproducible=True)
    opt_func = Adam if cfg.opt == Optimizer.adam else partial(SGD, mom=SGD_MOMENTUM)
    common: dict[str, Any] = dict(loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=opt_func,
                                  wd=cfg.wd, path=Path("."), model_dir=".")
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
    if cfg.loss.is_embedding:  # an embedding: BN-neck head, margin loss, matching F1 on unseen groups
        learn.model[1] = embedding_head(body_features(learn.model), cfg.embed_dim)
        goal = objective(cfg, len(dls.vocab))
        learn.loss_func, learn.metrics = goal.loss_func, goal.metrics
        learn.add_cbs(goal.callbacks)
        learn.opt = None  # vision_learner made one for the replaced head
        learn.freeze()  # an embedding is always pretrained (TrainConfig checks): the body stays frozen
    elif cfg.loss != Loss.softmax:  # another classifier loss: every phase trains with it
        learn.loss_func = objective(cfg, len(dls.vocab)).loss_func
    learn.precision = configure(learn, cfg.precision)
    return learn


def setup(cfg: TrainConfig, skipped_report: Path | None = None,
          valid_groups: float = VALID_GROUPS) -> tuple[ResolvedConfig, WeightsChoice, Prepared, Any]:
    """Resolve the settings, check the environment and the weights (fail fast), prepare and split the data (an
    embedding holding out `valid_groups` of its groups), and build the learner."""
    run = resolve(cfg)
    check_environment(run)
    choice = resolve_weights(run.arch, run.pretrained, run.weights)
    prep = prepare(run, skipped_report, valid_groups)
    # with member folds the valid photos train the other members too: they are training rows as well
    again = [prep.rows(S.VALID).assign(**{S.SPLIT: S.TRAIN})] if run.member_folds else []
    train_valid = pd.concat([prep.rows(S.TRAIN), *again, prep.rows(S.VALID)], ignore_index=True)
    # an embedding's validation groups are not among its training groups: name them all in the vocabulary
    vocab = sorted(train_valid[D.LABEL].astype(str).unique()) if run.loss.is_embedding else None
    dls = make_dataloaders(train_valid, input_stats(run.arch), LoaderConfig(run.size, run.bs, run.aug, run.workers, run.seed),
                           vocab)
    return run, choice, prep, build_learner(dls, run, choice)
