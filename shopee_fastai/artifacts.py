"""A trained model's files: where each lives, the model card, and loading `.pkl` learners and `.safetensors` weights.

A fastai `.pkl` is a pickle: loading one runs whatever code it names, so load only files you trust. The
`.safetensors` export holds only tensors plus a JSON config (arch, classes, input size and statistics) in
its metadata; loading it rebuilds the network from this package's code, and inference repeats fastai's
validation preprocessing, so its predictions match the `.pkl`'s. ONNX exports carry the same config.
"""

from __future__ import annotations

import json
import pickle
import types
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ShopeeError

FORMAT = "shopee-fastai-safetensors/1"
META_KEY = "shopee_fastai"
PKL, SAFETENSORS, ONNX = ".pkl", ".safetensors", ".onnx"
INT8 = ".int8"  # before .onnx: the quantised graph
# Modules that classes pickled in exported learners lived in before the package had layers.
MOVED = {"shopee_fastai.transforms": "shopee_fastai.data.loaders", "shopee_fastai.models": "shopee_fastai.nets.cnn"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(MOVED.get(module, module), name)


_PICKLE = types.ModuleType("pickle")  # what torch.load takes: pickle itself, but with the renaming Unpickler
_PICKLE.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")}, Unpickler=_Unpickler)


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
        from .io import write_json

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


def load_learner(path: Path, cpu: bool | None = None):
    """Unpickle an exported learner (as fastai's `load_learner`), turning every way it can fail into one line."""
    import torch
    from fastai.learner import Learner

    path = require_file(path)
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    device = torch.device("cpu" if cpu else "cuda")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = torch.load(path, map_location=device, pickle_module=_PICKLE, weights_only=False)
    except (ModuleNotFoundError, ImportError, AttributeError, UnboundLocalError) as e:
        raise ShopeeError(f"{path}: the code this learner was exported with cannot be found ({e}); "
                          "install the shopee-fastai version that trained it, or retrain") from e
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ShopeeError(f"{path}: not a readable fastai learner (truncated or another format); re-export it with `shopee-fastai train`") from e
    if not isinstance(learn, Learner):
        raise ShopeeError(f"{path}: holds a {type(learn).__name__}, not a fastai Learner; pass a .pkl written by `shopee-fastai train`")
    learn.dls.to(device)
    return learn


def input_size(learn) -> int | None:
    """The side the learner's item transforms resize to (what a prepared cache must cover)."""
    for t in learn.dls.after_item.fs:
        if hasattr(t, "size") and t.size is not None:
            return int(max(t.size))
    return None


def learner_config(learn, arch: str | None = None, titles: dict[str, str] | None = None) -> dict[str, Any]:
    """What a weights-only or ONNX export needs to predict like `learn`, read from the learner itself."""
    from fastai.data.transforms import Normalize

    from .config import CNN_ARCH, EMBEDDING, PROBS
    from .nets.body import is_embedding
    from .nets.cnn import HandCNN
    from .nets.ensemble import Ensemble

    norm = next(t for t in learn.dls.after_batch.fs if isinstance(t, Normalize))
    embedding = is_embedding(learn.model)
    output = {"output": EMBEDDING, "dim": int(learn.model[1][-1].num_features)} if embedding else {"output": PROBS}
    if isinstance(learn.model, Ensemble):
        output.update(members=len(learn.model.members), top_stages=len(learn.model.members[0][0]) - 2)
    arch = arch or getattr(learn, "arch", None) or (CNN_ARCH if isinstance(learn.model, HandCNN) else None)
    return {"format": FORMAT, "arch": arch if isinstance(arch, str) else None, "classes": [str(c) for c in learn.dls.vocab],
            "size": input_size(learn), "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(),
            "preprocess": "centre crop to square, bilinear resize to size, /255, normalise", "titles": dict(titles or {}), **output}


def parse_config(meta: dict[str, str], what: str, fix: str) -> dict[str, Any]:
    """The config a model file carries in its metadata (safetensors or ONNX), or one line saying it has none."""
    try:
        cfg = json.loads(meta[META_KEY])
        if cfg.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, json.JSONDecodeError) as e:
        raise ShopeeError(f"{what} without a shopee-fastai config; {fix}") from e
    return cfg


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


def write_safetensors(learn, arch: str, dest: Path, titles: dict[str, str] | None = None) -> None:
    """Write the model's tensors and config to `dest` atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(learner_config(learn, arch, titles))})


def build_model(cfg: dict[str, Any]):
    """The network for `cfg`, from this package's code (no weights yet)."""
    from .config import CNN_ARCH
    from .nets.body import check_arch
    from .nets.cnn import HandCNN

    arch, n = cfg["arch"], len(cfg["classes"])
    check_arch(arch)
    if arch == CNN_ARCH:
        return HandCNN(n, cfg["size"])
    from fastai.vision.learner import create_timm_model

    from .config import EMBEDDING
    from .nets.body import body_features, embedding_head

    model = create_timm_model(arch, n, pretrained=False)[0]
    if cfg.get("output") == EMBEDDING:
        model[1] = embedding_head(body_features(model), int(cfg["dim"]))
    if cfg.get("members"):
        from .nets.ensemble import ensemble_of

        model = ensemble_of(model, int(cfg["top_stages"]), int(cfg["members"]))
    return model


def load_safetensors(path: Path) -> tuple[Any, dict[str, Any]]:
    """The network and config of a `.safetensors` export (tensors only), every failure one line naming the file."""
    from safetensors import SafetensorError, safe_open

    path = require_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ShopeeError(f"{path}: not a readable safetensors file (truncated or another format); re-export it with `shopee-fastai train`") from e
    cfg = parse_config(meta, f"{path}: safetensors", "export it with `shopee-fastai train`")
    try:
        model = build_model(cfg)
    except ShopeeError as e:
        raise ShopeeError(f"{path}: its arch {cfg.get('arch')!r} is not known to this version; upgrade shopee-fastai or retrain") from e
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise ShopeeError(f"{path}: its config does not describe a network this version builds ({type(e).__name__}: {e}); "
                          "re-export it with `shopee-fastai train`") from e
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ShopeeError(f"{path}: tensors do not fit a {cfg['arch']} with {len(cfg['classes'])} classes; re-export it") from e
    return model.eval(), cfg


def load_network(path: Path, cpu: bool = True) -> tuple[Any, dict[str, Any]]:
    """The bare network and its config from a `.pkl` or `.safetensors` (what ONNX export and fast inference need).

    The config carries the class titles wherever the model keeps them, so an ONNX export made from it does too.
    """
    path = require_file(path)
    if path.suffix == SAFETENSORS:
        model, cfg = load_safetensors(path)
        return model.to("cpu" if cpu else "cuda"), {**cfg, "titles": model_titles(path, cfg)}
    learn = load_learner(path, cpu=cpu)
    return learn.model, learner_config(learn, titles=model_titles(path))
