"""Decode any photo a marketplace holds into an upright 8-bit RGB image, or say which file is bad and why."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ShopeeError

# Pillow refuses images over 2x this many pixels; Shopee's largest (5,000 px square) are 25 Mpx.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
WHITE = (255, 255, 255)
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


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
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except FileNotFoundError as e:
        raise ShopeeError(f"{path}: image file not found; add it or remove its row") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ShopeeError(f"{path}: image too large to decode safely (over {MAX_PIXELS:,} pixels); downsize it") from e
    except UnidentifiedImageError as e:
        raise ShopeeError(f"{path}: not an image file (empty or another format); replace it or remove its row") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ShopeeError(f"{path}: image cannot be decoded ({e}); re-export it or remove its row") from e

