"""Weights-only models: a `.safetensors` file whose metadata holds the config, loaded without unpickling.

A fastai `.pkl` is a pickle: loading one runs whatever code it names. The `.safetensors` export holds
only tensors plus a JSON config (arch, classes, input size and statistics, preprocessing) in the file's
metadata; loading it rebuilds the same network from this package's code and fills in the tensors, and
preprocessing repeats fastai's validation pipeline (centre crop to square, bilinear resize, scale,
normalise), so predictions match the `.pkl`'s.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .errors import ShopeeError
from .images import load_rgb

FORMAT = "shopee-fastai-safetensors/1"
META_KEY = "shopee_fastai"
SUFFIX = ".safetensors"


def config_for(learn, card: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "arch": card["arch"], "classes": [str(c) for c in learn.dls.vocab],
            "size": card["input"]["size"], "mean": card["input"]["mean"], "std": card["input"]["std"],
            "preprocess": "centre crop to square, bilinear resize to size, /255, normalise"}


def export_safe(learn, card: dict[str, Any], dest: Path) -> None:
    """Write the model's tensors and config to `dest` atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(config_for(learn, card))})


def build_model(cfg: dict[str, Any]):
    """The network for `cfg`, from this package's code (no weights yet)."""
    from .models import CNN_ARCH, HandCNN, check_arch

    arch, n = cfg["arch"], len(cfg["classes"])
    check_arch(arch)
    if arch == CNN_ARCH:
        return HandCNN(n, cfg["size"])
    from fastai.vision.learner import create_timm_model

    return create_timm_model(arch, n, pretrained=False)[0]


def preprocess(im: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """fastai's validation `Resize(size)` (centre crop of the largest square, bilinear) then scale and normalise."""
    w, h = im.size
    m = min(w, h) / size
    cw, ch = int(m * size), int(m * size)
    left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
    im = im.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]


@dataclass
class SafeModel:
    model: Any
    cfg: dict[str, Any]

    @property
    def vocab(self) -> list[str]:
        return self.cfg["classes"]

    def probs(self, images: Sequence[Path], bs: int = 64, progress: bool = True):
        """Same contract as `predict.predict_probs`: readable images' probabilities, unreadable ones listed."""
        import torch
        from fastprogress.fastprogress import progress_bar

        from .predict import CHUNK, DECODE_THREADS, Predictions

        size, mean, std = self.cfg["size"], self.cfg["mean"], self.cfg["std"]

        def load(p):
            try:
                return preprocess(load_rgb(p), size, mean, std), None  # full decode, as the learner path
            except ShopeeError as e:
                return None, str(e)

        from .cache import use_cache

        sources = use_cache(map(str, images), size)[0]  # the prepared cache, as the learner path uses it
        done, out, failures = [], [], []
        starts = range(0, len(images), CHUNK)
        with ThreadPoolExecutor(DECODE_THREADS) as pool, torch.inference_mode():
            for start in progress_bar(starts) if progress and len(starts) > 1 else starts:
                chunk = list(images[start : start + CHUNK])
                loaded = list(pool.map(load, sources[start : start + CHUNK]))
                failures += [e for _, e in loaded if e]
                good = [(p, x) for p, (x, _) in zip(chunk, loaded) if x is not None]
                for b in range(0, len(good), bs):
                    batch = torch.from_numpy(np.stack([x for _, x in good[b : b + bs]]))
                    out.append(self.model(batch).softmax(1))
                done += [p for p, _ in good]
        probs = torch.cat(out) if out else torch.empty(0, len(self.vocab))
        return Predictions(done, probs, failures)


def load_safe(path: Path) -> SafeModel:
    """Load a `.safetensors` export: tensors and config only, every failure one line naming the file."""
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
    try:
        cfg = json.loads(meta[META_KEY])
        if cfg.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, json.JSONDecodeError) as e:
        raise ShopeeError(f"{path}: safetensors without a shopee-fastai config; export it with `shopee-fastai train`") from e
    try:
        model = build_model(cfg)
    except ShopeeError as e:
        raise ShopeeError(f"{path}: its arch {cfg.get('arch')!r} is not known to this version; upgrade shopee-fastai or retrain") from e
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ShopeeError(f"{path}: tensors do not fit a {cfg['arch']} with {len(cfg['classes'])} classes; re-export it") from e
    return SafeModel(model.eval(), cfg)
