"""A pre-resized image cache: decode each large photo once, at the size training uses, instead of every epoch.

Each source is stored upright, RGB, with its shorter side resized to `side` (never enlarged), as a JPEG
named by a hash of the source's absolute path, size and modification time: a changed source gets a new
entry, an unchanged one is never redone. `Resize(size)` in the DataBlock crops from the shorter side, so
a cache with `side >= size` loses nothing that training would have used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from ..config import cache_dir
from ..errors import ShopeeError
from ..io import atomic_path, file_key
from .images import decode_chunks, load_rgb
from .table import PATH, clean, read_table

CACHE_QUALITY = 95  # re-encoding loss well below what augmentation changes


def images_root() -> Path:
    return cache_dir() / "images"


def cached_path(src: str | Path, side: int, root: Path | None = None) -> Path | None:
    """The cache entry for `src` at `side`, or None if there is none (or `src` is gone)."""
    try:
        p = (root or images_root()) / f"s{side}" / f"{file_key(Path(src))}.jpg"
    except OSError:
        return None
    return p if p.is_file() else None


def resize_shorter(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    scale = side / min(w, h)
    if scale >= 1:
        return im
    return im.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC)


@dataclass
class PrepareResult:
    written: int
    reused: int
    failed: dict[str, str]


def _prepare_one(src: str, side: int, root: Path) -> str:
    """'reused' or 'written'; a ShopeeError when the source cannot be read."""
    if cached_path(src, side, root) is not None:
        return "reused"
    im = resize_shorter(load_rgb(src, draft_size=side), side)
    with atomic_path(root / f"s{side}" / f"{file_key(Path(src))}.jpg") as tmp:
        im.save(tmp, "JPEG", quality=CACHE_QUALITY)
    return "written"


def prepare(paths: Sequence[str], side: int, root: Path | None = None, progress: bool = True) -> PrepareResult:
    """Fill the cache for `paths` at `side`, in parallel; idempotent; bad images are listed, not fatal."""
    if side < 8:  # the same floor as TrainConfig's --size
        raise ShopeeError(f"--size {side}: must be at least 8")
    root = root or images_root()
    counts = {"written": 0, "reused": 0}
    failed = {}
    for part in decode_chunks(list(paths), lambda p: _prepare_one(p, side, root), progress=progress):
        for i, what, err in part:
            if err:
                failed[paths[i]] = err
            else:
                counts[what] += 1
    return PrepareResult(counts["written"], counts["reused"], failed)


def prepare_folder(data: Path, size: int, top_groups: int = 0) -> PrepareResult:
    """`prepare` the photos of `data`'s table: its `top_groups` largest label groups (0: every row)."""
    return prepare(list(clean(read_table(data), top_groups)[PATH]), size)


def best_side(size: int, root: Path | None = None) -> int | None:
    """The smallest prepared side that is at least `size` (nothing smaller can serve), or None."""
    root = root or images_root()
    sides = sorted(int(p.name[1:]) for p in root.glob("s*") if p.name[1:].isdigit()) if root.is_dir() else []
    return next((s for s in sides if s >= size), None)


def use_cache(paths: Iterable[str], size: int, root: Path | None = None) -> tuple[list[str], int]:
    """Swap each path for its cache entry where one exists; return the paths and how many were swapped."""
    side = best_side(size, root)
    paths = list(paths)
    if side is None:
        return paths, 0
    hits = [cached_path(p, side, root) for p in paths]
    return [str(h) if h else p for p, h in zip(paths, hits)], sum(h is not None for h in hits)
