"""Choose and load the predictor for a model file: `.pkl` learner, `.safetensors` weights or `.onnx` graph."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..artifacts import ONNX, PKL, SAFETENSORS, ModelFiles, load_learner, load_network, model_titles, require_file
from ..config import Backend, Precision
from ..device import gpu_present
from ..errors import ShopeeError
from ..machine import cpu
from .predictions import Predictor


def _onnx_available() -> bool:
    from .backends import onnx_available

    return onnx_available()


def load_predictor(path: Path, backend: str = Backend.auto, precision: str = Precision.auto, tta: bool = False) -> Predictor:
    """A predictor for `path`.

    `auto` runs PyTorch with mixed precision on a CUDA GPU; on CPU, ONNX Runtime where it is installed
    (the graph `train` wrote beside the model, or else one exported on first use and cached; later runs
    import neither fastai nor torch), else PyTorch channels-last; `fastai` is the learner's own `get_preds`.
    `precision` int8 runs the model's quantised graph (written by `train`, or `export-onnx --int8`). An
    explicit backend or precision that cannot run is an error, never a silent switch. `tta` (fastai's
    test-time augmentation: the training pipeline's augmentations, 5 passes) needs the `.pkl` learner and
    runs on the fastai backend.
    The predictor carries the model's class titles, whatever the file's format.
    """
    predictor, why = _predictor(Path(path), backend, precision, tta)
    predictor.titles = model_titles(path, getattr(predictor, "cfg", None))
    predictor.why = why
    return predictor


def _int8_note() -> str:
    """Why int8 is not the default here: it moves some top-1 predictions everywhere, and gains less without VNNI."""
    return "int8 is opt-in (--precision int8): it changes some top-1 predictions" + (
        "" if cpu().int8_dot else "; this CPU has no VNNI, so int8 may be no faster")


def _predictor(path: Path, backend: str, precision: str, tta: bool) -> tuple[Predictor, str]:
    """The predictor, and one line saying which network runs on what, and why."""
    from . import backends as B

    backend = Backend.parse(backend, "--backend")
    precision = Precision.parse(precision, "--precision")
    path = require_file(path)
    if tta and (backend not in (Backend.auto, Backend.fastai) or path.suffix != PKL):
        raise ShopeeError(f"{path}: --tta runs the fastai learner's augmentations; pass the .pkl with --backend auto or fastai")
    if precision == Precision.int8:
        if backend not in (Backend.auto, Backend.onnx) or tta:
            raise ShopeeError("--precision int8 runs the model's quantised ONNX graph; use --backend auto or onnx, without --tta")
        vnni = "" if cpu().int8_dot else "; this CPU has no VNNI: compare speed with --precision fp32"
        return _int8(path), f"ONNX Runtime, int8 graph (asked for with --precision int8{vnni})"
    if (backend in (Backend.onnx, Backend.fastai) or tta) and precision not in (Precision.auto, Precision.fp32):
        raise ShopeeError(f"--precision {precision}: the {'fastai (--tta)' if tta else backend} backend runs fp32; "
                          f"use --backend torch for {precision}")
    if path.suffix == ONNX:
        if backend not in (Backend.auto, Backend.onnx):
            raise ShopeeError(f"{path}: an ONNX model runs on --backend onnx only; pass the .pkl or .safetensors for {backend}")
        return B.onnx_predictor(path), f"ONNX Runtime, {path.name}"
    if backend == Backend.fastai or tta:
        if path.suffix == SAFETENSORS:
            raise ShopeeError(f"{path}: --backend fastai needs the .pkl learner; a .safetensors runs on onnx or torch")
        return B.LearnerPredictor(load_learner(path), tta), f"fastai learner{' with TTA' if tta else ''} ({'--tta' if tta else '--backend fastai'})"

    gpu = backend in (Backend.auto, Backend.torch) and gpu_present()
    network = lambda: load_network(path, cpu=not gpu)  # noqa: E731
    if backend == Backend.onnx or (backend == Backend.auto and not gpu and precision in (Precision.auto, Precision.fp32)
                                   and _onnx_available()):
        graph = ModelFiles.beside(path).onnx
        beside = _bound(path, graph)
        if beside is not None:
            return beside, f"ONNX Runtime, fp32 graph {graph.name} written with the model; {_int8_note()}"
        try:
            onnx_file = B.cached_onnx(path, network)
        except ShopeeError:
            raise
        except Exception as e:  # an architecture the ONNX exporter cannot trace
            if backend == Backend.onnx:
                raise ShopeeError(f"{path}: cannot be exported to ONNX ({type(e).__name__}: {str(e)[:160]}); use --backend torch") from e
            warnings.warn(f"{path}: ONNX export failed ({type(e).__name__}); predicting with PyTorch instead")
        else:
            return B.onnx_predictor(onnx_file), f"ONNX Runtime, fp32 graph exported from {path.name} and cached; {_int8_note()}"
    model, cfg = network()
    torch_backend = B.TorchBackend(model, cfg, precision)
    where = "GPU" if gpu else "CPU"
    why = "--backend torch" if backend == Backend.torch else ("a GPU" if gpu else "no onnxruntime, or a --precision it does not run")
    return B.FastPredictor(torch_backend, cfg), f"PyTorch on {where}, {torch_backend.precision} ({why})"


def _bound(path: Path, graph: Path):
    """A predictor on `graph` if it was exported from exactly `path` (its metadata holds `path`'s digest), else None."""
    from ..io import digest
    from . import backends as B

    if not graph.is_file() or graph == path:
        return None
    try:
        session = B.onnx_session(graph)
        cfg = B.onnx_config(session, graph)
    except ShopeeError:
        return None  # an unreadable or foreign graph beside the model is simply not used
    if cfg.get("source", {}).get(path.suffix) != digest(path):
        return None
    return B.FastPredictor(B.OnnxBackend(session), cfg)


def _int8(path: Path):
    """The model's int8 graph: `path` itself, or the one beside it made from exactly this file."""
    from . import backends as B

    if path.suffix == ONNX:
        predictor = B.onnx_predictor(path)
        if predictor.cfg.get("precision") == Precision.int8:
            return predictor
    predictor = _bound(path, ModelFiles.beside(path).int8)
    if predictor is None:
        source = path if path.suffix != ONNX else ModelFiles.beside(path).pkl
        raise ShopeeError(f"{path}: no int8 graph made from this model beside it; write one with "
                          f"`shopee-fastai export-onnx --model {source} --int8 --data DIR` (DIR: its training data)")
    return predictor
