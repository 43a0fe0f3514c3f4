"""The work behind the page and the API: classify photos, find their nearest catalogue listings.

No web code here. Both front ends hand over (shown name, file) pairs and show the same answers: the
objects `predict --json` prints, and per photo its nearest listings with similarity and title.
"""

from __future__ import annotations

import contextlib
import queue
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..artifacts import ModelCard, ModelFiles
from ..config import OFFLINE_ARCH, PREDICT_BS, PROBS, SERVE_EXAMPLES, SERVE_NEIGHBOURS, TOP_K
from ..data import split as S
from ..data import table as D
from ..errors import ShopeeError
from ..inference.load import load_predictor
from ..inference.predictions import Predictions, top_k
from ..matching import Catalogue, MatchSettings, embed_for_matching, read_catalog, settings_for, source_line


class BadInput(ShopeeError):
    """A request the client can fix; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    name: str  # as the client named it: what messages show
    data: bytes


@contextlib.contextmanager
def staged(uploads: Sequence[Upload]) -> Iterator[list[tuple[str, Path]]]:
    """The uploads as files in a private temporary folder (the predictors read files), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="shopee-fastai-upload-") as tmp:
        files = []
        for i, u in enumerate(uploads):
            # only a sanitised base name: the client's name never chooses where the file goes
            safe = re.sub(r"[^\w.-]", "_", Path(u.name).name)[-100:] or "upload"
            path = Path(tmp) / f"{i}-{safe}"
            path.write_bytes(u.data)
            files.append((u.name, path))
        yield files


def _name_failures(messages: Sequence[str], files: Sequence[tuple[str, Path]]) -> list[dict[str, str]]:
    """Decoder messages (which start `path: `) restated with the name the client gave."""
    out = []
    for msg in messages:
        name, path = next(((n, p) for n, p in files if msg.startswith(f"{p}: ")), (None, None))
        out.append({"image": name or "?", "error": msg.replace(str(path), name, 1) if path else msg})
    return out


def training_examples(model: Path, card: ModelCard | None, classes: Sequence[str],
                      per_group: int = SERVE_EXAMPLES) -> dict[str, list[Path]]:
    """A few training photos per class, from the data the card names; none where that folder is not on this machine."""
    if card is None:
        return {}
    try:
        table = D.read_table(Path(card.data))
        rows = S.rows_in_split(table, S.read_split(Path(model).parent / card.split["file"]), S.TRAIN)
    except (ShopeeError, KeyError, OSError):
        return {}
    wanted = set(map(str, classes))
    return {str(g): [Path(p) for p in r[D.PATH] if Path(p).is_file()][:per_group]
            for g, r in rows.groupby(D.LABEL) if str(g) in wanted}


@dataclass
class _Job:
    paths: list[Path]
    done: threading.Event = field(default_factory=threading.Event)
    result: Predictions | None = None
    error: BaseException | None = None


class Batcher:
    """Photos of concurrent requests go through the model together, one batch at a time.

    A batch costs less per photo than single-photo forwards, and one forward at a time keeps the cores from
    being split between requests. Nothing waits to fill a batch: what queued while the last one ran goes next.
    """

    def __init__(self, outputs: Callable[[list[Path]], Predictions], most: int):
        self.outputs, self.most = outputs, most
        self.jobs: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._work, name="shopee-fastai-batcher", daemon=True).start()

    def __call__(self, paths: Sequence[Path]) -> Predictions:
        job = _Job(list(paths))
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _work(self) -> None:
        while True:
            jobs = [self.jobs.get()]
            while sum(len(j.paths) for j in jobs) < self.most:
                try:
                    jobs.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                self._share(jobs, self.outputs([p for j in jobs for p in j.paths]))
            except BaseException as e:  # the requests fail with it; the worker goes on
                for j in jobs:
                    j.error = e
            for j in jobs:
                j.done.set()

    @staticmethod
    def _share(jobs: list[_Job], preds: Predictions) -> None:
        """Give each job its rows and failures: both come in input order, readable and unreadable photos apart."""
        row = fail = 0
        for j in jobs:
            rows, failures = [], []
            for p in j.paths:
                if row < len(preds.paths) and preds.paths[row] == p:
                    rows.append(row)
                    row += 1
                else:
                    failures.append(preds.failures[fail])
                    fail += 1
            j.result = Predictions([preds.paths[r] for r in rows], preds.outputs[rows], failures)


@dataclass
class Catalog:
    """The served catalogue: its folder and the matcher `match --catalog` uses (matching.Catalogue), built once."""

    folder: Path
    matcher: Catalogue

    @classmethod
    def load(cls, folder: Path, settings: MatchSettings, embed: Callable[[list[str]], np.ndarray],
             csv: str = "train.csv") -> Catalog:
        """Embed every listing once with `embed` (cached on disk) and index them."""
        table = read_catalog(Path(folder), csv)
        return cls(Path(folder), Catalogue(table, embed(list(table[D.PATH])), settings))

    @property
    def table(self) -> pd.DataFrame:
        return self.matcher.table

    @property
    def settings(self) -> MatchSettings:
        return self.matcher.settings

    @property
    def image_dir(self) -> Path:
        return Path(self.table[D.PATH].iloc[0]).parent

    def path_of(self, image: str) -> Path:
        return D.images_dir(self.folder) / image


@dataclass
class Service:
    """One loaded model (the fast inference path), its titles and example photos, and an optional catalogue.

    A classifier classifies, and matches with the pretrained backbone's embeddings (as `match` without
    --model); an embedding model (train --loss arcface) only matches, with its own embeddings.
    """

    model: Path
    predictor: Any
    examples: dict[str, list[Path]] = field(default_factory=dict)
    catalog: Catalog | None = None
    settings_source: str = ""  # where the catalogue's match settings came from

    def __post_init__(self) -> None:
        self.batcher = Batcher(lambda paths: self.predictor.outputs(paths, progress=False), PREDICT_BS)

    @classmethod
    def load(cls, model: Path, catalog: Path | None = None) -> Service:
        predictor = load_predictor(Path(model))
        card = ModelCard.read(model) if ModelFiles.beside(model).card.is_file() else None
        service = cls(Path(model), predictor)
        if not service.classifies and catalog is None:
            raise ShopeeError(f"--model {model}: an embedding model finds matches, it has no label groups to show; "
                              "give --catalog DIR (a Kaggle-layout folder of listings)")
        if service.classifies:
            service.examples = training_examples(Path(model), card, predictor.vocab)
        if catalog:
            settings, service.settings_source = settings_for(model)
            service.catalog = Catalog.load(catalog, settings, lambda paths: service.embed(paths, catalogue=True))
        return service

    @property
    def classifies(self) -> bool:
        return self.predictor.output == PROBS

    def embed(self, paths: Sequence[str | Path], catalogue: bool = False) -> np.ndarray:
        """Unit vectors in input order (zeros for unreadable photos), from what `match --model` embeds with
        (matching.embed_for_matching); an embedding model's queries go through the batcher, on the same predictor.

        A `catalogue`'s embeddings are cached on disk by the files' (and the model's) identities.
        """
        from ..inference.embed import aligned  # imports torch: an ONNX model serves without it

        if catalogue or self.classifies:
            return embed_for_matching(paths, self.model, OFFLINE_ARCH, cache=catalogue, progress=catalogue)
        return aligned(self.batcher([Path(p) for p in paths]), paths)

    @property
    def titles(self) -> dict[str, str]:
        return self.predictor.titles

    @property
    def backend(self) -> str:
        return getattr(getattr(self.predictor, "backend", None), "name", "fastai")

    def health(self) -> dict[str, Any]:
        cat = self.catalog
        return {"status": "ok", "model": ModelFiles.beside(self.model).name, "backend": self.backend,
                "output": self.predictor.output, "classes": list(self.predictor.vocab), "titles": self.titles,
                "catalog": {"listings": len(cat.table), "threshold": cat.settings.threshold, **cat.settings.to_dict(),
                            "settings": self.settings_source, "embeddings": source_line(self.model)} if cat else None}

    @staticmethod
    def check_k(k: Any, most: int, what: str = "top_k") -> int:
        """A client's count as a whole number from 1, capped at `most` (as `predict --top-k` is)."""
        try:
            n = int(k)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise BadInput(f"{what}={k}: give a whole number of at least 1")
        return min(n, most)

    def require_catalog(self) -> Catalog:
        if self.catalog is None:
            raise BadInput("this server has no catalogue to match against; start it with `serve --catalog DIR`", 404)
        return self.catalog

    def classify(self, files: Sequence[tuple[str, Path]], k: int = TOP_K) -> tuple[list[dict], list[dict]]:
        """(one `predict --json` object per readable photo, one {"image", "error"} per unreadable one)."""
        if not self.classifies:
            raise BadInput(f"{ModelFiles.beside(self.model).name} is an embedding model: it has no label groups to "
                           "predict; POST /api/match finds a photo's listings", 409)
        name = {str(p): n for n, p in files}
        preds = self.batcher([p for _, p in files])
        ranked = top_k(preds.outputs, self.predictor.vocab, k, self.titles)
        results = [{"image": name[str(p)], "predictions": r} for p, r in zip(preds.paths, ranked)]
        return results, _name_failures(preds.failures, files)

    def match(self, files: Sequence[tuple[str, Path]], k: int = SERVE_NEIGHBOURS) -> tuple[list[dict], list[dict]]:
        """(per readable photo its nearest listings and those that match, one {"image", "error"} per unreadable one)."""
        catalog = self.require_catalog()
        bad = D.find_unreadable([str(p) for _, p in files])
        good = [(n, p) for n, p in files if str(p) not in bad]
        results = []
        if good:
            found = catalog.matcher.match(self.embed([p for _, p in good]))
            cat = catalog.matcher
            for (n, _), matched, sims, idx in zip(good, found.matches, found.sims, found.idx):
                ranked = [(int(j), float(s)) for s, j in zip(sims, idx) if j >= 0]  # faiss: best first
                results.append({"image": n, "threshold": catalog.settings.threshold,
                                "matches": [str(cat.table[D.ID].iat[j]) for j, _ in ranked if j in matched],
                                "nearest": [cat.listing(j, s, j in matched) for j, s in ranked[:k]]})
        return results, _name_failures(list(bad.values()), files)
