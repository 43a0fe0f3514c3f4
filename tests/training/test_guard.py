"""The divergence guard inside fastai's loop: a run that a too-high learning rate throws off comes back, and a
healthy run is left alone."""

import warnings

import numpy as np
import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.optimizer import SGD

from shopee_fastai.training.callbacks import DivergenceGuard, history


def separable(seed: int = 0) -> DataLoaders:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoaders.from_dsets(list(zip(x, y)), list(zip(x, y)), bs=32, device="cpu")


def fit(lr: float, guard: bool) -> tuple[Learner, list, list]:
    """The learner, the guard's warnings and the run's history rows (read before validate() starts a new record)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 2))
    learn = Learner(separable(), model, loss_func=torch.nn.CrossEntropyLoss(), metrics=accuracy, opt_func=SGD,
                    cbs=[DivergenceGuard()] if guard else [])
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit_one_cycle(4, lr)
    return learn, [str(w.message) for w in caught if "diverged" in str(w.message)], history(learn, "fit")


def test_a_run_thrown_off_by_its_learning_rate_comes_back():
    wrecked, _, _ = fit(100.0, guard=False)
    assert not hasattr(wrecked, "recoveries")
    loss, acc = wrecked.validate()
    assert not np.isfinite(loss) or acc < 0.7  # the planted case: this rate wrecks the run
    guarded, warned, rows = fit(100.0, guard=True)
    loss, acc = guarded.validate()
    assert np.isfinite(loss) and acc > 0.9
    assert warned and "restored the last good weights and halved the learning rate" in warned[0]
    assert sum(r.get("recoveries", 0) for r in rows) == len(warned) >= 1


def test_a_healthy_run_is_left_alone():
    learn, warned, rows = fit(0.5, guard=True)
    assert not warned and learn.recoveries == {}
    assert learn.validate()[1] > 0.95
    assert len(rows) == 4 and all("recoveries" not in r for r in rows)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_never_reaches_the_weights(bad):
    from fastai.callback.core import Callback

    class Poison(Callback):
        order = DivergenceGuard.order - 1  # the loss of one batch turns non-finite before the guard sees it

        def after_loss(self):
            if self.training and self.iter == 7 and self.epoch == 0:
                self.learn.loss = self.learn.loss * bad
                self.learn.loss_grad = self.learn.loss_grad * bad

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 2)
    learn = Learner(separable(), model, loss_func=torch.nn.CrossEntropyLoss(), metrics=accuracy, opt_func=SGD,
                    cbs=[Poison(), DivergenceGuard()])
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        learn.fit_one_cycle(4, 0.2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert learn.recoveries == {0: 1} and learn.validate()[1] > 0.9
