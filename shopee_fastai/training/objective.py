"""What a model learns: a classifier over its training groups (cross-entropy, or generalised cross-entropy for
mislabelled catalogues), or an embedding for matching.

An embedding trains with an additive angular margin loss from pytorch-metric-learning (ArcFace, or
Sub-center ArcFace) and validates on label groups it never trained on: its valid loss is a pair loss
(those groups have no class centres) and its metric the matching F1 at the best threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.mixup import reduce_loss
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Metric, accuracy
from torch import nn

from ..config import GCE_Q, SEED, SUB_CENTERS, Loss, ResolvedConfig
from ..data import split as S
from ..data.table import LABEL, PATH
from ..errors import ShopeeError
from ..inference.embed import aligned
from ..inference.torch_backends import predict_probs
from ..matching import Calibration, MatchSettings, calibrate, find, score, shopee_draws, true_matches
from .callbacks import F1_METRIC, ValidLoss

# pytorch-metric-learning's class for each margin loss, with what it takes beyond ArcFace's arguments
MARGIN_LOSSES: dict[Loss, tuple[str, dict[str, Any]]] = {
    Loss.arcface: ("ArcFaceLoss", {}),
    Loss.subcenter: ("SubCenterArcFaceLoss", {"sub_centers": SUB_CENTERS}),
}


class MarginLoss(nn.Module):
    """pytorch-metric-learning's ArcFace / Sub-center ArcFace; its class centres are trained parameters.

    `activation` is what fastai's get_preds applies: unit-length embeddings, what matching compares.
    """

    def __init__(self, loss: Loss, n_classes: int, dim: int, margin: float, scale: float):
        super().__init__()
        from pytorch_metric_learning import losses  # optional: only margin losses need it, and --loss says how to get it

        name, extra = MARGIN_LOSSES[loss]
        self.loss = getattr(losses, name)(num_classes=n_classes, embedding_size=dim, margin=margin, scale=scale, **extra)

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(emb.float(), y.as_subclass(torch.Tensor).long())

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MarginRamp(Callback):
    """Grows a margin loss's margin from 0 to its full angle over the first `pct` of training: the ramp several
    Shopee solutions used, so early steps, with class centres still random, are not all spent on the margin."""

    def __init__(self, loss: MarginLoss, degrees: float, pct: float):
        self.margin_loss, self.full, self.pct = loss, float(np.radians(degrees)), pct

    def before_batch(self):
        if self.training:
            self.margin_loss.loss.margin = self.full * min(1.0, self.learn.pct_train / self.pct)

    def after_fit(self):
        self.margin_loss.loss.margin = self.full


class PairLoss(nn.Module):
    """Contrastive loss over a batch's pairs (pytorch-metric-learning): defined for any labels, seen or not."""

    def __init__(self):
        super().__init__()
        from pytorch_metric_learning import distances, losses  # optional, as above

        self.loss = losses.ContrastiveLoss(pos_margin=1, neg_margin=0, distance=distances.CosineSimilarity())

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(emb.float(), y.as_subclass(torch.Tensor).long())


class MatchF1(Metric):
    """Mean per-row matching F1 (the competition's metric) of the validation set at its best threshold."""

    def reset(self):
        self.embs, self.labels = [], []

    def accumulate(self, learn):
        self.embs.append(F.normalize(learn.pred.detach().float(), dim=1).cpu())
        self.labels.append(learn.yb[0].as_subclass(torch.Tensor).cpu())

    @property
    def value(self):
        if not self.embs:
            return None
        return calibrate(torch.cat(self.embs).numpy(), torch.cat(self.labels).tolist(), min2=False, blend=False).score.f1

    @property
    def name(self) -> str:
        return F1_METRIC


@dataclass
class Objective:
    """The loss a model trains with, its metrics, the callbacks its validation needs, and the loss's own weights."""

    loss_func: Any
    metrics: list
    callbacks: list = field(default_factory=list)

    @property
    def params(self) -> list:
        return list(self.loss_func.parameters()) if isinstance(self.loss_func, nn.Module) else []


OBJECTIVES: dict[Loss, Callable[[ResolvedConfig, int, float], Objective]] = {}  # filled by @register_objective


def register_objective(*losses: Loss):
    """Decorator: `fn(cfg, n_classes, label_smoothing) -> Objective` builds the objective of `losses` (as timm's
    register_model)."""
    def register(fn):
        OBJECTIVES.update(dict.fromkeys(losses, fn))
        return fn
    return register


def objective(cfg: ResolvedConfig, n_classes: int, label_smoothing: float = 0.0) -> Objective:
    """The objective `cfg.loss` asks for, over `n_classes` training classes."""
    return OBJECTIVES[cfg.loss](cfg, n_classes, label_smoothing)


@register_objective(Loss.softmax)
def softmax_objective(cfg: ResolvedConfig, n_classes: int, label_smoothing: float) -> Objective:
    """Cross-entropy over the training groups, scored by accuracy; its valid loss without label smoothing."""
    return Objective(CrossEntropyLossFlat(label_smoothing=label_smoothing), [accuracy], [ValidLoss(CrossEntropyLossFlat())])


@register_objective(*MARGIN_LOSSES)
def margin_objective(cfg: ResolvedConfig, n_classes: int, label_smoothing: float) -> Objective:
    """A margin loss, scored by matching F1 and validated by a pair loss on groups it never trains on."""
    try:
        loss = MarginLoss(cfg.loss, n_classes, cfg.embed_dim, cfg.margin, cfg.scale)
    except ImportError as e:
        raise ShopeeError(f"--loss {cfg.loss} needs pytorch-metric-learning: pip install pytorch-metric-learning") from e
    ramp = [MarginRamp(loss, cfg.margin, cfg.margin_ramp)] if cfg.margin_ramp else []
    return Objective(loss, [MatchF1()], [ValidLoss(PairLoss()), *ramp])


class GeneralisedCrossEntropy(nn.Module):
    """(1 - p_y^q) / q (Zhang & Sabuncu, 2018): cross-entropy as q -> 0, mean absolute error at q = 1. Bounded, so
    a photo filed under the wrong group cannot pull the network as hard as cross-entropy lets it. fastai reads
    its `activation` and `decodes` as a classifier's, and `y_int` and `reduction` as CrossEntropyLossFlat's, so
    MixUp mixes per-photo losses rather than integer labels."""

    y_int = True
    reduction = "mean"  # also what a learner pickled before the attribute existed reads

    def __init__(self, q: float = GCE_Q, reduction: str = "mean"):
        super().__init__()
        self.q, self.reduction = q, reduction

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits.float(), dim=1).gather(1, y.as_subclass(torch.Tensor).long()[:, None]).squeeze(1)
        return reduce_loss((1 - p.clamp_min(1e-7) ** self.q) / self.q, self.reduction)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=1)


@register_objective(Loss.gce)
def gce_objective(cfg: ResolvedConfig, n_classes: int, label_smoothing: float) -> Objective:
    """Generalised cross-entropy over the training groups (label smoothing does not apply: the loss is already
    bounded), scored by accuracy; its valid loss plain cross-entropy, comparable with the softmax objective's."""
    return Objective(GeneralisedCrossEntropy(cfg.gce_q), [accuracy], [ValidLoss(CrossEntropyLossFlat())])


def _embed(learn, rows) -> np.ndarray:
    return aligned(predict_probs(learn, list(rows[PATH]), progress=False), list(rows[PATH]))


def calibrate_matching(learn, prep, seed: int = SEED) -> dict[str, Any]:
    """Matching settings calibrated on the validation groups (never trained on), with the F1 they score there,
    on the test photos of those groups, and on all test photos.

    The F1 a threshold is chosen on is the mean over Shopee-shaped draws of those groups (mostly pairs): whole
    groups of dozens of photos reward recall, and their best threshold over-matches a marketplace's pairs."""
    valid, test = prep.rows(S.VALID), prep.rows(S.TEST)
    if valid[LABEL].nunique() < 1 or len(valid) < 2:
        raise ShopeeError("the validation split has fewer than 2 photos; an embedding calibrates on them: add groups")
    labels = valid[LABEL].astype(str).tolist()
    emb = _embed(learn, valid)
    if len(set(labels)) >= 2:
        # blending wins on the occasion it is calibrated on and loses on a new one (docs/results.md): off unless asked
        cal = calibrate(emb, labels, blend=False, draws=shopee_draws(labels, seed))
    else:  # one group: matching everything would score best, so keep the defaults
        cal = Calibration(MatchSettings(), score(find(emb, MatchSettings()), true_matches(labels)))
    out: dict[str, Any] = {**cal.settings.to_dict(), "valid_f1": cal.score.f1, "valid_groups": len(set(labels)),
                           "calibrated": len(set(labels)) >= 2, "on_grid_edge": cal.on_edge}
    test_emb = _embed(learn, test)  # once: the unseen groups' photos are part of the test photos
    unseen = test[LABEL].astype(str).isin(set(labels)).to_numpy()
    for key, rows in (("test_f1_unseen", unseen), ("test_f1", np.ones(len(test), bool))):
        if rows.sum() > 1:
            out[key] = score(find(test_emb[rows], cal.settings), true_matches(test[LABEL].astype(str)[rows].tolist())).f1
    return out
