"""The one image decoder: any photo a marketplace holds becomes an upright 8-bit RGB image, or one line saying
which file is bad and why; and the one threaded decoder that reads many of them in order, a chunk at a time."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ShopeeError

# Pillow refuses images over 2x this many pixels; Shopee's largest (5,000 px square) are 25 Mpx.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
WHITE = (255, 255, 255)
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DECODE_THREADS = max(2, os.cpu_count() or 2)  # Pillow releases the GIL while decoding
CHUNK = 256  # images decoded ahead at most: bounds memory however many are asked for


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode: transparency over white (product cut-outs), 16-bit and float scaled, CMYK/palette converted."""
    if im.mode in _WIDE_MODES:
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        back = Image.new("RGB", rgba.size, WHITE)
        back.paste(rgba, mask=rgba.getchannel("A"))
        return back
    return im.convert("RGB") if im.mode != "RGB" else im


def upright_rgb(im: Image.Image) -> Image.Image:
    """A new image, EXIF orientation applied and in RGB: what `load_rgb` makes of a file, for a photo already
    opened (the caller's image is left as it was)."""
    return to_rgb(ImageOps.exif_transpose(im))


def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open, decode fully, apply EXIF orientation and convert to RGB.

    `draft_size` lets the JPEG decoder skip detail the caller will not use (it decodes at 1/2..1/8 scale,
    never below the size asked for), which makes large photos several times cheaper.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                return upright_rgb(im)
    except FileNotFoundError as e:
        raise ShopeeError(f"{path}: image file not found; add it or remove its row") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ShopeeError(f"{path}: image too large to decode safely (over {MAX_PIXELS:,} pixels); downsize it") from e
    except UnidentifiedImageError as e:
        raise ShopeeError(f"{path}: not an image file (empty or another format); replace it or remove its row") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ShopeeError(f"{path}: image cannot be decoded ({e}); re-export it or remove its row") from e



def crop_resize(im: Image.Image, size: int) -> Image.Image:
    """fastai's validation `Resize(size)`: the centred largest square, resized bilinearly to size x size."""
    w, h = im.size
    side = int(min(w, h) / size * size)
    left, top = int(0.5 * (w - side)), int(0.5 * (h - side))
    # crop, then resize: resizing with `box=` would also filter in pixels from outside the square
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def decode(path: str | Path, size: int, draft: bool = True) -> np.ndarray:
    """One photo as fastai's validation pipeline sees it: uint8 [size, size, 3] (HWC, what Pillow gives without a copy)."""
    return np.asarray(crop_resize(load_rgb(path, draft_size=size if draft else None), size))


def decode_chunks(sources: Sequence[str | Path], load: Callable[[str | Path], Any] = load_rgb,
                  threads: int = DECODE_THREADS, chunk: int = CHUNK,
                  progress: bool = False) -> Iterator[list[tuple[int, Any, str | None]]]:
    """`load` of every source in a thread pool, in input order, a chunk at a time: lists of (index, value, error).

    A file `load` cannot read (a ShopeeError) gives value None and the error's one line; nothing else is caught.
    `progress` shows a bar over the chunks when there is more than one.
    """
    starts = range(0, len(sources), chunk)
    if progress and len(starts) > 1:  # fastprogress prints a stray bar even with display=False: wrap only to show one
        from fastprogress.fastprogress import progress_bar  # 0.1 s that the ONNX predict path, which imports this module, never needs

        starts = progress_bar(starts)

    def one(i: int) -> tuple[int, Any, str | None]:
        try:
            return i, load(sources[i]), None
        except ShopeeError as e:
            return i, None, str(e)

    with ThreadPoolExecutor(threads) as pool:
        for start in starts:
            yield list(pool.map(one, range(start, min(start + chunk, len(sources)))))


def decode_all(sources: Sequence[str | Path], load: Callable[[str | Path], Any] = load_rgb,
               threads: int = DECODE_THREADS) -> list[tuple[Any, str | None]]:
    """(value, error) for every source, in input order (see `decode_chunks`)."""
    return [(value, err) for part in decode_chunks(sources, load, threads) for _, value, err in part]


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside them (sorted, recursively)."""
    inputs = list(inputs)
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
