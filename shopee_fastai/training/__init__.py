"""Training: the learner, the recipes' phases inside fastai's loop, their callbacks, export, and the study's comparison."""

from .train import Trained, export, fit_learner, lr_find, train

__all__ = ["Trained", "export", "fit_learner", "lr_find", "train"]
