"""Any model file in, a predictor or a network out: `.pkl` learner, `.safetensors` weights, `.onnx` or `.int8.onnx` graph.

A fastai `.pkl` is a pickle: loading one runs whatever code it names, so load only files you trust. The
`.safetensors` export holds only tensors plus a JSON config (arch, classes, input size and statistics) in
its metadata; loading it rebuilds the network from this package's code, and inference repeats fastai's
validation preprocessing, so its predictions match the `.pkl`'s. ONNX exports carry the same config.

Every way a file can fail to load is one line (ShopeeError) naming the file and the fix. An ONNX model,
or a `.pkl`/`.safetensors` with its graph beside it or cached, loads without importing fastai or torch.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from safetensors import SafetensorError, safe_open

from ..artifacts import FORMAT, META_KEY, ONNX, PKL, SAFETENSORS, ModelFiles, model_titles, require_file
from ..config import CNN_ARCH, EMBEDDING, Backend, Precision, cache_dir
from ..device import gpu_present
from ..errors import ShopeeError
from ..io import digest, file_key
from ..machine import cpu
from .backends import FastPredictor, OnnxBackend, onnx_available, onnx_session
from .predictions import Predictor


def parse_config(meta: dict[str, str], what: str, fix: str) -> dict[str, Any]:
    """The config a model file carries in its metadata (safetensors or ONNX), or one line saying it has none."""
    try:
        cfg = json.loads(meta[META_KEY])
        if cfg.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, json.JSONDecodeError) as e:
        raise ShopeeError(f"{what} without a shopee-fastai config; {fix}") from e
    return cfg


def onnx_config(session, where: Path | str) -> dict[str, Any]:
    """The config in an ONNX graph's metadata."""
    return parse_config(session.get_modelmeta().custom_metadata_map, f"{where}: an ONNX model",
                        "export it with `shopee-fastai export-onnx`")


def onnx_predictor(path: Path) -> FastPredictor:
    """An `.onnx` export behind ONNX Runtime, with the config from its metadata."""
    session = onnx_session(path)
    return FastPredictor(OnnxBackend(session), onnx_config(session, path))


def load_learner(path: Path, cpu: bool | None = None):
    """Unpickle an exported learner (as fastai's `load_learner`), turning every way it can fail into one line."""
    # torch and fastai only once a .pkl is loaded: an ONNX predict never imports them
    import torch
    from fastai.learner import Learner

    path = require_file(path)
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    device = torch.device("cpu" if cpu else "cuda")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = torch.load(path, map_location=device, weights_only=False)
    except (ModuleNotFoundError, ImportError, AttributeError, UnboundLocalError) as e:
        raise ShopeeError(f"{path}: the code this learner was exported with cannot be found ({e}); "
                          "install the shopee-fastai version that trained it, or retrain") from e
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ShopeeError(f"{path}: not a readable fastai learner (truncated or another format); re-export it with `shopee-fastai train`") from e
    if not isinstance(learn, Learner):
        raise ShopeeError(f"{path}: holds a {type(learn).__name__}, not a fastai Learner; pass a .pkl written by `shopee-fastai train`")
    learn.dls.to(device)
    return learn


def build_model(cfg: dict[str, Any]):
    """The network for `cfg`, from this package's code (no weights yet)."""
    # the networks import torch and fastai: only a model that runs on PyTorch builds one
    from fastai.vision.learner import create_timm_model

    from ..nets import body, cnn, ensemble  # they import torch, as the fastai import above does

    arch, n = cfg["arch"], len(cfg["classes"])
    body.check_arch(arch)
    if arch == CNN_ARCH:
        return cnn.HandCNN(n, cfg["size"])
    model = create_timm_model(arch, n, pretrained=False)[0]
    if cfg.get("output") == EMBEDDING:
        model[1] = body.embedding_head(body.body_features(model), int(cfg["dim"]))
    if cfg.get("members"):
        model = ensemble.ensemble_of(model, int(cfg["top_stages"]), int(cfg["members"]))
    return model


def load_safetensors(path: Path) -> tuple[Any, dict[str, Any]]:
    """The network and config of a `.safetensors` export (tensors only), every failure one line naming the file."""
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
    from .export import learner_config  # imports torch and onnx: only a .pkl needs it here

    learn = load_learner(path, cpu=cpu)
    return learn.model, learner_config(learn, titles=model_titles(path))


@dataclass(frozen=True)
class PredictorBackend:
    """One backend's entry in BACKENDS: the model files it reads, the precisions it computes in, and its loader,
    `load(path, asked, precision, tta) -> (predictor, why)`, where `asked` is the --backend given (maybe auto)."""

    files: tuple[str, ...]
    precisions: tuple[Precision, ...]
    load: Callable[[Path, Backend, Precision, bool], tuple[Predictor, str]]


BACKENDS: dict[Backend, PredictorBackend] = {}  # filled by @register_backend below, in the order errors list them


def register_backend(backend: Backend, files: tuple[str, ...], precisions: tuple[Precision, ...]):
    """Decorator: the function is `backend`'s loader, for `files` in `precisions` (as timm's register_model)."""
    def register(load):
        BACKENDS[backend] = PredictorBackend(files, precisions, load)
        return load
    return register


def load_predictor(path: Path, backend: str = Backend.auto, precision: str = Precision.auto, tta: bool = False) -> Predictor:
    """A predictor for `path`, with one line (`.why`) saying which network runs on what, and why.

    `auto` runs PyTorch with mixed precision on a CUDA GPU; on CPU, ONNX Runtime where it is installed
    (the graph `train` wrote beside the model, or else one exported on first use and cached; later runs
    import neither fastai nor torch), else PyTorch channels-last. `precision` int8 (`--int8`) runs the
    model's quantised graph; `tta` (fastai's test-time augmentation, 5 passes) runs the `.pkl` learner.
    A `backend` forces one; what it cannot run is an error, never a silent switch. fp32, bf16 and fp16
    pin PyTorch's precision. The predictor carries the model's class titles, whatever the file's format.
    """
    path = require_file(path)
    backend, precision = Backend.parse(backend, "--backend"), Precision.parse(precision, "--precision")
    predictor, why = BACKENDS[_backend(path, backend, precision, tta)].load(path, backend, precision, tta)
    predictor.titles = model_titles(path, getattr(predictor, "cfg", None))
    predictor.why = why
    return predictor


def load_classifier(path: Path, backend: str = Backend.auto, precision: str = Precision.auto, tta: bool = False) -> Predictor:
    """`load_predictor` for top-k label groups: an embedding model has none, and says where its matches are."""
    predictor = load_predictor(path, backend, precision, tta)
    if predictor.output == EMBEDDING:
        raise ShopeeError(f"--model {path}: an embedding model (train --loss arcface) has no classes to predict; "
                          "find its matches with `shopee-fastai match --model`")
    return predictor


def _backend(path: Path, backend: Backend, precision: Precision, tta: bool) -> Backend:
    """The backend that runs what was asked, or one line saying why none does."""
    kind = path.suffix if path.suffix in (SAFETENSORS, ONNX) else PKL  # any other name is read as a fastai learner
    if tta and (backend not in (Backend.auto, Backend.fastai) or kind != PKL):
        raise ShopeeError(f"{path}: --tta runs the fastai learner's augmentations; pass the .pkl with --backend auto or fastai")
    if precision == Precision.int8 and (backend not in (Backend.auto, Backend.onnx) or tta):
        raise ShopeeError("--int8 runs the model's quantised ONNX graph; use --backend auto or onnx, without --tta")
    if backend == Backend.auto:
        torch_only = precision in (Precision.bf16, Precision.fp16)
        backend = (Backend.fastai if tta else Backend.onnx if precision == Precision.int8 or kind == ONNX
                   else Backend.torch if torch_only or not onnx_available() or gpu_present() else Backend.onnx)
    reads = BACKENDS[backend]
    if kind not in reads.files:
        readers = [str(b) for b, r in BACKENDS.items() if kind in r.files]
        needs = "the .pkl learner" if reads.files == (PKL,) else " or ".join(reads.files)
        raise ShopeeError(f"{path}: --backend {backend} needs {needs}; a {kind} runs on --backend "
                          f"{' or '.join(readers)}{' only' if len(readers) == 1 else ''}")
    if precision not in reads.precisions:
        runs = " or ".join(str(p) for p in reads.precisions if p != Precision.auto)
        raise ShopeeError(f"--precision {precision}: the {'fastai (--tta)' if tta else backend} backend runs {runs}; "
                          f"use --backend torch for {precision}")
    return backend


@register_backend(Backend.onnx, (PKL, SAFETENSORS, ONNX), (Precision.auto, Precision.fp32, Precision.int8))
def _onnx(path: Path, asked: Backend, precision: Precision, tta: bool) -> tuple[Predictor, str]:
    """ONNX Runtime on the int8 graph, the `.onnx` given, the graph written beside the model, or one exported and
    cached; PyTorch where the exporter cannot trace the network and --backend onnx was not asked for."""
    if precision == Precision.int8:
        return _int8(path), f"ONNX Runtime, int8 graph (asked for with --precision int8 or --int8{_no_vnni()})"
    if path.suffix == ONNX:
        return onnx_predictor(path), f"ONNX Runtime, {path.name}"
    graph = ModelFiles.beside(path).onnx
    beside = _bound(path, graph)
    if beside is not None:
        return beside, f"ONNX Runtime, fp32 graph {graph.name} written with the model; {_int8_note()}"
    exported = _exported(path, lambda: load_network(path, cpu=True), forced=asked == Backend.onnx)
    if exported is not None:
        return exported, f"ONNX Runtime, fp32 graph exported from {path.name} and cached; {_int8_note()}"
    return _torch(path, asked, precision, tta)


@register_backend(Backend.torch, (PKL, SAFETENSORS), (Precision.auto, Precision.fp32, Precision.bf16, Precision.fp16))
def _torch(path: Path, asked: Backend, precision: Precision, tta: bool) -> tuple[Predictor, str]:
    """The bare network on PyTorch: mixed precision on a GPU, channels-last on CPU."""
    from .torch_backends import TorchBackend  # torch-free until a network runs on PyTorch

    gpu = gpu_present()
    torch_backend = TorchBackend(*load_network(path, cpu=not gpu), precision)
    why = ("--backend torch" if asked == Backend.torch else "a GPU" if gpu else f"--precision {precision}"
           if precision != Precision.auto else "no onnxruntime" if not onnx_available() else "the ONNX export failed")
    return FastPredictor(torch_backend, torch_backend.cfg), f"PyTorch on {'GPU' if gpu else 'CPU'}, {torch_backend.precision} ({why})"


@register_backend(Backend.fastai, (PKL,), (Precision.auto, Precision.fp32))
def _fastai(path: Path, asked: Backend, precision: Precision, tta: bool) -> tuple[Predictor, str]:
    """The learner's own get_preds: the one backend that runs fastai's test-time augmentation."""
    from .torch_backends import LearnerPredictor  # torch-free until a network runs on PyTorch

    return LearnerPredictor(load_learner(path), tta), f"fastai learner{' with TTA' if tta else ''} ({'--tta' if tta else '--backend fastai'})"


def _int8_note() -> str:
    """Why int8 is not the default here: it moves some top-1 predictions everywhere, and gains less without VNNI."""
    return "int8 is opt-in (--int8): it changes some top-1 predictions" + _no_vnni()


def _no_vnni() -> str:
    """What int8 costs on this CPU when it lacks VNNI (its u8 x s8 sums saturate), else nothing."""
    return "" if cpu().int8_dot else ("; this CPU has no VNNI: int8 gains little here and changes far more top-1 "
                                      "predictions (docs/speed.md)")


def _exported(path: Path, network: Callable[[], tuple[Any, dict[str, Any]]], forced: bool) -> FastPredictor | None:
    """ONNX Runtime on the graph exported from `path` (cached); None where the exporter cannot trace it, unless forced."""
    try:
        return onnx_predictor(cached_onnx(path, network))
    except ShopeeError:
        raise
    except Exception as e:  # an architecture the ONNX exporter cannot trace
        if forced:
            raise ShopeeError(f"{path}: cannot be exported to ONNX ({type(e).__name__}: {str(e)[:160]}); use --backend torch") from e
        warnings.warn(f"{path}: ONNX export failed ({type(e).__name__}); predicting with PyTorch instead")
        return None


def cached_onnx(model_file: Path, build: Callable[[], tuple[Any, dict[str, Any]]]) -> Path:
    """The ONNX graph for `model_file`, exported on first use and cached by the file's identity."""
    dest = cache_dir() / "onnx" / f"{model_file.stem}-{file_key(model_file)}{ONNX}"
    if not dest.is_file():
        from .export import write_onnx  # imports torch, onnx and fastai: only a cache miss exports

        write_onnx(*build(), dest)
    return dest


def _bound(path: Path, graph: Path) -> FastPredictor | None:
    """A predictor on `graph` if it was exported from exactly `path` (its metadata holds `path`'s digest), else None."""
    if not graph.is_file() or graph == path:
        return None
    try:
        session = onnx_session(graph)
        cfg = onnx_config(session, graph)
    except ShopeeError:
        return None  # an unreadable or foreign graph beside the model is simply not used
    if cfg.get("source", {}).get(path.suffix) != digest(path):
        return None
    return FastPredictor(OnnxBackend(session), cfg)


def _int8(path: Path) -> FastPredictor:
    """The model's int8 graph: `path` itself, or the one beside it made from exactly this file."""
    if path.suffix == ONNX:
        predictor = onnx_predictor(path)
        if predictor.cfg.get("precision") == Precision.int8:
            return predictor
    predictor = _bound(path, ModelFiles.beside(path).int8)
    if predictor is None:
        source = path if path.suffix != ONNX else ModelFiles.beside(path).pkl
        raise ShopeeError(f"{path}: no int8 graph made from this model beside it; write one with "
                          f"`shopee-fastai export-onnx --model {source} --int8 --data DIR` (DIR: its training data)")
    return predictor
