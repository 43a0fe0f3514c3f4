"""The Python API: what the CLI does, for notebooks. `import shopee_fastai.api as sf`.

- `sample(dest)`: the bundled sample (147 real grocery photos) copied into a Kaggle-layout folder.
- `dataloaders(data, **settings)`: the fastai DataLoaders `train` builds (this package's DataBlock).
- `learner(data, **settings)`: the fastai Learner `train` starts from, for `lr_find`, `fine_tune`, `fit_one_cycle`.
- `train(data, **settings)`: the default recipe (or any `TrainConfig`), exported into `models/`; its model card.
- `load(model_file)`: any model file as a `Model` that takes photo paths and PIL images.
- `evaluate(model_file, ...)`, `embed(photos, ...)`, `match(data, ...)`, `match_catalog(new, catalog, ...)`,
  `audit(data, ...)`: the commands of the same names; `apply_fixes(data, fixes, out, accept)` is `audit --apply`.

`**settings` are `TrainConfig`'s fields (`arch`, `pretrained`, `top_groups`, `seed`, ...), checked as the CLI
checks them. Every error you can fix is a `ShopeeError` whose message names the fix.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from .artifacts import ModelCard
from .audit import Audit, AuditConfig, apply_fixes, run_audit
from .config import OFFLINE_ARCH, TOP_K, Backend, Index, Precision, TrainConfig
from .data import table as D
from .errors import ShopeeError
from .evaluation import evaluate
from .inference.load import load_predictor
from .inference.predictions import Predictions, Predictor, top_k
from .matching import CatalogMatch, MatchResult, MatchSettings, embed_for_matching, match_new_listings, match_postings, settings_for
from .training import train as _train
from .training.learner import setup

Photo = Union[str, Path, Image.Image]

__all__ = ["Model", "ShopeeError", "TrainConfig", "apply_fixes", "audit", "dataloaders", "embed", "evaluate", "learner", "load",
           "match", "match_catalog", "sample", "train"]


def sample(dest: str | Path = "shopee-sample") -> Path:
    """The bundled sample (6 products, Kaggle layout) copied to `dest` (kept if it is already there)."""
    D.copy_sample(Path(dest))
    return Path(dest)


def _config(data: str | Path | TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    if isinstance(data, TrainConfig):
        if settings:
            raise ShopeeError("give a TrainConfig or a data folder with settings, not both")
        return data
    return TrainConfig(data=Path(data), **settings)


def learner(data: str | Path | TrainConfig, **settings):
    """The fastai Learner `train` starts from (frozen where pretrained), on the DataLoaders `train` builds from
    `data` as `settings` split it: use it the fastai way (`lr_find`, `fine_tune`, `show_results`, `export`)."""
    return setup(_config(data, settings))[3]


def dataloaders(data: str | Path | TrainConfig, **settings):
    """The fastai DataLoaders `train` builds from `data` (this package's DataBlock: `show_batch`, `test_dl`)."""
    return learner(data, **settings).dls


def train(data: str | Path | TrainConfig, **settings) -> ModelCard:
    """Train as `shopee-fastai train` does and export into `models_dir` (default `models/`); the model card says
    what was trained, how, and how it scored (`card.name` names its files)."""
    return _train(_config(data, settings))


@dataclass
class Model:
    """A model file (.pkl, .safetensors or .onnx) on the predictor `predict` uses; photos are paths or PIL images."""

    predictor: Predictor

    @property
    def classes(self) -> list[str]:
        return [str(v) for v in self.predictor.vocab]

    @property
    def titles(self) -> dict[str, str]:
        return self.predictor.titles

    def outputs(self, photos: Photo | Sequence[Photo]) -> Predictions:
        """The network's outputs (probabilities, or unit embeddings) for the readable photos; failures listed."""
        one = isinstance(photos, (str, Path, Image.Image))
        items = [photos] if one else list(photos)
        with tempfile.TemporaryDirectory(prefix="shopee-fastai-api-") as tmp:
            paths = [_as_file(p, Path(tmp) / f"{i}.png") for i, p in enumerate(items)]
            return self.predictor.outputs(paths, progress=False)

    def predict(self, photos: Photo | Sequence[Photo], k: int = TOP_K) -> list:
        """Best-first `{"label_group", "title", "probability"}` for a photo, or one such list per photo; an
        unreadable photo is a ShopeeError naming it."""
        one = isinstance(photos, (str, Path, Image.Image))
        got = self.outputs(photos)
        if got.failures:
            raise ShopeeError("; ".join(got.failures))
        if self.predictor.output != "probs":
            raise ShopeeError("an embedding model has no label groups to predict; use `embed` or `match`")
        ranked = top_k(got.outputs, self.classes, k, self.titles)
        return ranked[0] if one else ranked


def _as_file(photo: Photo, spare: Path) -> Path:
    """A path as it is; a PIL image written losslessly to `spare`, so every photo goes through the one decoder."""
    if isinstance(photo, Image.Image):
        photo.convert("RGB").save(spare, format="PNG")
        return spare
    return Path(photo)


def load(model: str | Path, backend: str = Backend.auto, tta: bool = False, int8: bool = False) -> Model:
    """Any model file `train` or `export-onnx` wrote, on the backend `predict` would choose (`backend`, `tta` and
    `int8` as `predict`'s options)."""
    return Model(load_predictor(Path(model), backend, Precision.int8 if int8 else Precision.auto, tta))


def embed(photos: Sequence[str | Path], model: str | Path | None = None, arch: str = OFFLINE_ARCH) -> np.ndarray:
    """[n, d] unit vectors that `match` compares (zeros for unreadable photos): the model's, else the backbone's."""
    return embed_for_matching(list(photos), Path(model) if model else None, arch, progress=False)


def match(data: str | Path, model: str | Path | None = None, csv: str = "train.csv", **given) -> tuple[pd.DataFrame, MatchResult]:
    """Every listing of `data` matched among itself with the model's calibrated settings (`threshold`, `min2`,
    `blend` override them), as `shopee-fastai match`: (the table, its matches and F1 when labelled)."""
    settings, _ = settings_for(Path(model) if model else None, given.pop("threshold", None), given.pop("min2", None),
                               given.pop("blend", None))
    return match_postings(Path(data), csv, Path(model) if model else None, settings=settings, **given)


def match_catalog(new: str | Path, catalog: str | Path, model: str | Path | None = None,
                  settings: MatchSettings | None = None, index: Index | str = Index.auto) -> CatalogMatch:
    """New listings (`new`, Kaggle layout) matched against a catalogue's, as `match --catalog` and `serve` do."""
    model = Path(model) if model else None
    return match_new_listings(Path(new), Path(catalog), model, settings or settings_for(model)[0], index=index)


def audit(data: str | Path, out: str | Path = "reports/audit", **settings) -> tuple[Audit, dict[str, Path]]:
    """What is wrong in a catalogue (`shopee-fastai audit`): the findings, and the files written into `out`."""
    return run_audit(AuditConfig(data=Path(data), out=Path(out), **settings), progress=False)
