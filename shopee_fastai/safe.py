"""Weights-only models: a `.safetensors` file whose metadata holds the config, loaded without unpickling.

A fastai `.pkl` is a pickle: loading one runs whatever code it names. The `.safetensors` export holds
only tensors plus a JSON config (arch, classes, input size and statistics, preprocessing) in the file's
metadata; loading it rebuilds the same network from this package's code and fills in the tensors, and
`infer` repeats fastai's validation preprocessing (centre crop to square, bilinear resize, scale,
normalise), so predictions match the `.pkl`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ShopeeError

FORMAT = "shopee-fastai-safetensors/1"
META_KEY = "shopee_fastai"
SUFFIX = ".safetensors"


def learner_config(learn, arch: str | None = None) -> dict[str, Any]:
    """What a weights-only or ONNX export needs to predict like `learn`, read from the learner itself."""
    from fastai.data.transforms import Normalize

    from .models import CNN_ARCH, HandCNN
    from .predict import input_size

    norm = next(t for t in learn.dls.after_batch.fs if isinstance(t, Normalize))
    arch = arch or getattr(learn, "arch", None) or (CNN_ARCH if isinstance(learn.model, HandCNN) else None)
    return {"format": FORMAT, "arch": arch if isinstance(arch, str) else None, "classes": [str(c) for c in learn.dls.vocab],
            "size": input_size(learn), "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(),
            "preprocess": "centre crop to square, bilinear resize to size, /255, normalise"}


def parse_config(meta: dict[str, str], what: str, fix: str) -> dict[str, Any]:
    """The config a model file carries in its metadata (safetensors or ONNX), or one line saying it has none."""
    try:
        cfg = json.loads(meta[META_KEY])
        if cfg.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, json.JSONDecodeError) as e:
        raise ShopeeError(f"{what} without a shopee-fastai config; {fix}") from e
    return cfg


def export_safe(learn, card: dict[str, Any], dest: Path) -> None:
    """Write the model's tensors and config to `dest` atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(learner_config(learn, card["arch"]))})


def build_model(cfg: dict[str, Any]):
    """The network for `cfg`, from this package's code (no weights yet)."""
    from .models import CNN_ARCH, HandCNN, check_arch

    arch, n = cfg["arch"], len(cfg["classes"])
    check_arch(arch)
    if arch == CNN_ARCH:
        return HandCNN(n, cfg["size"])
    from fastai.vision.learner import create_timm_model

    return create_timm_model(arch, n, pretrained=False)[0]


def load_safe(path: Path) -> tuple[Any, dict[str, Any]]:
    """The network and config of a `.safetensors` export (tensors only), every failure one line naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ShopeeError(f"{path}: model file not found; train one with `shopee-fastai train` or pass --model")
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
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ShopeeError(f"{path}: tensors do not fit a {cfg['arch']} with {len(cfg['classes'])} classes; re-export it") from e
    return model.eval(), cfg
