"""Out-of-fold class probabilities: the default recipe's head, trained K times on cached body features.

Every photo's probabilities come from a head that never saw it, which is what confident learning needs
to tell a wrong label from a hard photo (audit/). The body runs once for all folds (its pooled features
are the cached embeddings), so K folds cost K head trainings of a few seconds each.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle)
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.optimizer import OptimWrapper
from fastai.torch_core import set_seed
from fastai.vision.learner import create_head
from sklearn.model_selection import StratifiedKFold

from ..config import HEAD_EPOCHS, HEAD_WD, LABEL_SMOOTHING, LR, Optimizer
from .features import DIV_FINAL, HEAD_BS, PCT_START, VALID_BS, _float, _Views

FOLD_HEAD_EPOCHS = HEAD_EPOCHS[False]  # the head-alone recipe's epochs
MIN_STEPS = 200  # a small catalogue repeats its rows within an epoch: a few batches per epoch would leave the head untrained


def head_learner(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int, repeat: int = 1) -> Learner:
    """A fastai Learner of the recipe's head (fastai's create_head after pooling) over feature rows `x`, each
    row `repeat` times per epoch."""
    set_seed(seed, reproducible=True)
    rows = torch.arange(len(y)).repeat(repeat)
    train, valid = _Views(x[rows], y[rows]), _Views(x[:VALID_BS], y[:VALID_BS])  # nothing is chosen on valid: a token
    dls = DataLoaders(DataLoader(train, bs=HEAD_BS, shuffle=True, drop_last=False, create_batch=train.batch, after_batch=_float),
                      DataLoader(valid, bs=VALID_BS, create_batch=valid.batch, after_batch=_float), device=torch.device("cpu"))
    return Learner(dls, create_head(x.shape[1], n_classes, pool=False), loss_func=LabelSmoothingCrossEntropyFlat(eps=LABEL_SMOOTHING),
                   opt_func=partial(OptimWrapper, opt=torch.optim.AdamW), wd=HEAD_WD, wd_bn_bias=True, path=Path("."), model_dir=".")


def head_probs(x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor, n_classes: int, seed: int,
               epochs: int = FOLD_HEAD_EPOCHS) -> np.ndarray:
    """[len(x_eval), n_classes] softmax probabilities of a head trained on (x_train, y_train)."""
    batches = math.ceil(len(y_train) / HEAD_BS)
    learn = head_learner(x_train, y_train, n_classes, seed, repeat=max(1, math.ceil(MIN_STEPS / (epochs * batches))))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, LR[Optimizer.adam], pct_start=PCT_START, div_final=DIV_FINAL)
    learn.model.eval()
    with torch.inference_mode():
        logits = torch.cat([learn.model(x_eval[i : i + VALID_BS].float()) for i in range(0, len(x_eval), VALID_BS)])
    return torch.softmax(logits, 1).numpy()


def out_of_fold(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int,
                epochs: int = FOLD_HEAD_EPOCHS) -> np.ndarray:
    """[n, n_classes] probabilities for every row from the fold that held it out (stratified K-fold)."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    out = np.zeros((len(y), n_classes), np.float32)
    for k, (fit_rows, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
        out[held] = head_probs(xt[fit_rows], yt[fit_rows], xt[held], n_classes, seed + k, epochs)
    return out
