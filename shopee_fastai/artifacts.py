"""A trained model's files: where each lives beside the others, and the model card that describes them.

Loading and writing the files themselves is the inference layer's work (inference/load.py, inference/export.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ShopeeError
from .io import write_json

FORMAT = "shopee-fastai-safetensors/1"  # the config a .safetensors or .onnx export carries in its metadata
META_KEY = "shopee_fastai"
PKL, SAFETENSORS, ONNX = ".pkl", ".safetensors", ".onnx"
INT8 = ".int8"  # before .onnx: the quantised graph


@dataclass(frozen=True)
class ModelFiles:
    """Every file a model named `base.name` consists of, all beside each other."""

    base: Path  # models_dir / name, without a suffix

    @classmethod
    def of(cls, models_dir: Path, name: str) -> ModelFiles:
        return cls(Path(models_dir) / name)

    @classmethod
    def beside(cls, model_file: Path) -> ModelFiles:
        """The files of the model whose .pkl/.safetensors/.onnx/.int8.onnx is `model_file`."""
        p = Path(model_file)
        name = p.name[: -len(p.suffix)] if p.suffix else p.name
        return cls(p.with_name(name.removesuffix(INT8) if p.suffix == ONNX else name))

    def _with(self, suffix: str) -> Path:
        return Path(f"{self.base}{suffix}")

    @property
    def name(self) -> str:
        return self.base.name

    pkl = property(lambda self: self._with(PKL))
    card = property(lambda self: self._with(".json"))
    split = property(lambda self: self._with(".split.csv"))
    skipped = property(lambda self: self._with(".skipped.csv"))
    lr_find = property(lambda self: self._with(".lr_find.png"))
    curves = property(lambda self: self._with(".curves.png"))
    safetensors = property(lambda self: self._with(SAFETENSORS))
    onnx = property(lambda self: self._with(ONNX))  # fp32 graph: predicts without fastai or torch
    int8 = property(lambda self: self._with(INT8 + ONNX))  # its static int8 quantisation
    checkpoint = property(lambda self: self._with(".ckpt.pth"))  # weights + optimizer state
    progress = property(lambda self: self._with(".ckpt.json"))  # phase, epochs done, history so far
    best = property(lambda self: self._with(".best"))  # keep-best's scratch weights (fastai adds .pth)


@dataclass
class ModelCard:
    """What a trained model is and how it was made, written beside it as JSON (`models/<name>.json`)."""

    name: str
    arch: str
    weights: str  # where the starting weights came from
    classes: list[str]
    input: dict[str, Any]  # size, mean, std
    data: str
    config: dict[str, Any]  # the TrainConfig that ran, defaults resolved
    split: dict[str, Any]  # mode, seed, holdout, file, and the size of each split
    leaks: dict[str, Any] | None = None  # the near-duplicate report of a leak-free split
    titles: dict[str, str] = field(default_factory=dict)  # class -> its most common title in the training table
    precision: str = "fp32"
    skipped_images: int = 0
    cached_images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch and phase
    params: int = 0
    images_per_s: float = 0.0
    train_accuracy: float | None = None
    valid_accuracy: float | None = None
    test_accuracy: float | None = None
    # an embedding model's matching settings (threshold, min2, blend), calibrated on groups it never trained on,
    # with the F1 they scored there and on the test photos
    matching: dict[str, Any] | None = None
    members: list[dict[str, Any]] = field(default_factory=list)  # an ensemble's members, each scored alone
    wall_time_s: dict[str, float] = field(default_factory=dict)  # total and per phase
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, dest: Path) -> None:
        write_json(dest, self.to_dict())

    @classmethod
    def read(cls, model_file: Path) -> ModelCard:
        """The card beside `model_file` (its .pkl, .safetensors or .onnx), or one line saying what is wrong."""
        card = ModelFiles.beside(model_file).card
        if not card.is_file():
            raise ShopeeError(f"{card}: model card not found beside {model_file}; it is written by `shopee-fastai train`")
        try:
            raw = json.loads(card.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except json.JSONDecodeError as e:
            raise ShopeeError(f"{card}: not valid JSON ({e.msg} at line {e.lineno}); retrain to rewrite it") from e
        except TypeError as e:
            raise ShopeeError(f"{card}: not a shopee-fastai model card ({e}); retrain to rewrite it") from e


def require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ShopeeError(f"{path}: model file not found; train one with `shopee-fastai train` or pass --model")
    return path


def model_titles(model_file: Path, cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """Class -> readable title for any model format: from its own config (safetensors/ONNX metadata), else its card.

    {} where neither keeps titles; callers then show the bare class.
    """
    if (cfg or {}).get("titles"):
        return {str(k): str(v) for k, v in cfg["titles"].items()}
    if not ModelFiles.beside(model_file).card.is_file():
        return {}
    try:
        return dict(ModelCard.read(model_file).titles)
    except ShopeeError:
        return {}  # an unreadable card only costs the titles here; commands that need the card say what is wrong
