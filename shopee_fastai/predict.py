"""Load an exported learner and turn photos into label-group probabilities, with the training-time preprocessing."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .cache import use_cache
from .errors import ShopeeError
from .images import load_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
from .infer import CHUNK, DECODE_THREADS
DEFAULT_BS = 64


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside them (sorted, recursively)."""
    found: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise ShopeeError(f"{p}: no such file or folder; give image files or folders of images")
    if not found:
        raise ShopeeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, inputs))}")
    return found


def load_model(path: Path, cpu: bool | None = None):
    """Unpickle an exported learner (as fastai's `load_learner`), turning every way it can fail into one line.

    A `.pkl` runs code when loaded: only load files you trust (the README says more).
    """
    import torch
    from fastai.learner import Learner

    path = Path(path)
    if not path.is_file():
        raise ShopeeError(f"{path}: model file not found; train one with `shopee-fastai train` or pass --model")
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    device = torch.device("cpu" if cpu else "cuda")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = torch.load(path, map_location=device, pickle_module=pickle, weights_only=False)
    except (ModuleNotFoundError, ImportError, AttributeError, UnboundLocalError) as e:
        raise ShopeeError(f"{path}: the code this learner was exported with cannot be found ({e}); "
                          "install the shopee-fastai version that trained it, or retrain") from e
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ShopeeError(f"{path}: not a readable fastai learner (truncated or another format); re-export it with `shopee-fastai train`") from e
    if not isinstance(learn, Learner):
        raise ShopeeError(f"{path}: holds a {type(learn).__name__}, not a fastai Learner; pass a .pkl written by `shopee-fastai train`")
    learn.dls.to(device)
    return learn


def _decode(path: Path):
    try:
        return load_rgb(path), None
    except ShopeeError as e:
        return None, str(e)


@dataclass
class Predictions:
    paths: list[Path]  # images that were predicted, in input order
    probs: "object"  # torch.Tensor [len(paths), n_classes]
    failures: list[str]  # one line per image that could not be read


def input_size(learn) -> int | None:
    """The side the learner's item transforms resize to (what a prepared cache must cover)."""
    for t in learn.dls.after_item.fs:
        if hasattr(t, "size") and t.size is not None:
            return int(max(t.size))
    return None


def test_dls(learn, images: Sequence[Path], bs: int = DEFAULT_BS, progress: bool = True) -> Iterator[tuple[list[Path], Any, list[str]]]:
    """Chunks of (readable paths, a fastai test DataLoader over them, unreadable-image messages).

    Decoding runs in threads, from the prepared cache where it holds the image at a size that serves;
    at most CHUNK decoded images are held at once.
    """
    from fastprogress.fastprogress import progress_bar

    from .transforms import ShopeeImage

    size = input_size(learn)
    sources = use_cache(map(str, images), size)[0] if size else list(map(str, images))
    starts = range(0, len(images), CHUNK)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        # fastprogress prints a stray bar even with display=False, so only wrap when showing one
        for start in progress_bar(starts) if progress and len(starts) > 1 else starts:
            chunk = list(images[start : start + CHUNK])
            decoded = list(pool.map(_decode, sources[start : start + CHUNK]))
            failures = [err for _, err in decoded if err]
            good = [(p, im) for p, (im, err) in zip(chunk, decoded) if im is not None]
            dl = learn.dls.test_dl([ShopeeImage.create(im) for _, im in good], bs=bs, num_workers=0) if good else None
            yield [p for p, _ in good], dl, failures


def predict_probs(learn, images: Sequence[Path], bs: int = DEFAULT_BS, progress: bool = True,
                  tta: bool = False) -> Predictions:
    """Class probabilities for each readable image; unreadable ones are listed, not fatal.

    `tta`: fastai's test-time augmentation (mean of 4 augmented passes, blended with the plain one).
    """
    import torch

    learn.model.eval()
    done: list[Path] = []
    out: list = []
    failures: list[str] = []
    with learn.no_bar():
        for paths, dl, failed in test_dls(learn, images, bs, progress):
            failures += failed
            if dl is not None:
                probs, _ = learn.tta(dl=dl) if tta else learn.get_preds(dl=dl)
                done += paths
                out.append(probs.float())  # bf16 when trained under CPU autocast
    probs = torch.cat(out) if out else torch.empty(0, len(learn.dls.vocab))
    return Predictions(done, probs, failures)


def top_k(probs, vocab: Sequence, k: int) -> list[list[dict]]:
    """Best-first `{"label_group", "probability"}` lists, one per row of `probs` (numpy or torch)."""
    import numpy as np

    probs = np.asarray(probs)
    k = max(1, min(k, len(vocab)))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"label_group": str(vocab[i]), "probability": round(float(row[i]), 6)} for i in ids]
            for row, ids in zip(probs, idx)]


@dataclass
class LearnerModel:
    """A fastai learner behind the same two members as `infer.FastModel`."""

    learn: Any
    tta: bool = False

    @property
    def vocab(self) -> list[str]:
        return [str(v) for v in self.learn.dls.vocab]

    def probs(self, images: Sequence[Path], bs: int = DEFAULT_BS, progress: bool = True) -> Predictions:
        preds = predict_probs(self.learn, images, bs, progress, tta=self.tta)
        return Predictions(preds.paths, preds.probs.numpy(), preds.failures)


def _onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def load_predictor(path: Path, backend: str = "auto", precision: str = "auto", tta: bool = False):
    """A predictor for a `.pkl` learner, a `.safetensors` (no unpickling) or an `.onnx` export.

    `auto` runs PyTorch with mixed precision on a CUDA GPU; on CPU, ONNX Runtime where it is installed
    (the graph exported once per model file and cached, so later runs skip fastai and torch), else
    PyTorch channels-last; `fastai` is the learner's own `get_preds`. An explicit backend that cannot
    run is an error, never a silent switch. `tta` (fastai's test-time augmentation: the training
    pipeline's augmentations, 5 passes) needs the `.pkl` learner and runs on the fastai backend.
    """
    from . import infer
    from .safe import SUFFIX, load_safe

    path = Path(path)
    if backend not in infer.BACKENDS:
        raise ShopeeError(f"--backend {backend!r}: choose one of {', '.join(infer.BACKENDS)}")
    if precision not in infer.PRECISIONS:
        raise ShopeeError(f"--precision {precision!r}: choose one of {', '.join(infer.PRECISIONS)}")
    if not path.is_file():
        raise ShopeeError(f"{path}: model file not found; train one with `shopee-fastai train` or pass --model")
    if tta and (backend not in ("auto", "fastai") or path.suffix != ".pkl"):
        raise ShopeeError(f"{path}: --tta runs the fastai learner's augmentations; pass the .pkl with --backend auto or fastai")
    if (backend in ("onnx", "fastai") or tta) and precision not in ("auto", "fp32"):
        raise ShopeeError(f"--precision {precision}: the {'fastai (--tta)' if tta else backend} backend runs fp32; use --backend torch for {precision}")
    if path.suffix == infer.ONNX_SUFFIX:
        if backend not in ("auto", "onnx"):
            raise ShopeeError(f"{path}: an ONNX model runs on --backend onnx only; pass the .pkl or .safetensors for {backend}")
        return infer.onnx_model(path)
    safe = path.suffix == SUFFIX
    if backend == "fastai" or tta:
        if safe:
            raise ShopeeError(f"{path}: --backend fastai needs the .pkl learner; a .safetensors runs on onnx or torch")
        return LearnerModel(load_model(path), tta)

    gpu = backend in ("auto", "torch") and infer.gpu_present()

    def network():
        if safe:
            model, cfg = load_safe(path)
            return model.to("cuda" if gpu else "cpu"), cfg
        from .safe import learner_config

        learn = load_model(path, cpu=not gpu)
        return learn.model, learner_config(learn)

    if backend == "onnx" or (backend == "auto" and not gpu and precision in ("auto", "fp32") and _onnx_available()):
        try:
            onnx_file = infer.cached_onnx(path, network)
        except ShopeeError:
            raise
        except Exception as e:  # an architecture the ONNX exporter cannot trace
            if backend == "onnx":
                raise ShopeeError(f"{path}: cannot be exported to ONNX ({type(e).__name__}: {str(e)[:160]}); use --backend torch") from e
            warnings.warn(f"{path}: ONNX export failed ({type(e).__name__}); predicting with PyTorch instead")
        else:
            return infer.onnx_model(onnx_file)
    model, cfg = network()
    return infer.FastModel(infer.TorchBackend(model, cfg, precision), cfg)
