import io

import numpy as np
import pytest
from PIL import Image

from shopee_fastai.data.images import MAX_PIXELS, load_rgb
from shopee_fastai.errors import ShopeeError


def save(path, im, fmt=None, **kw):
    im.save(path, fmt, **kw)
    return path


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("L", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"),
                                       ("LA", "PNG"), ("1", "PNG")])
def test_every_mode_becomes_8bit_rgb(tmp_path, mode, fmt):
    im = Image.new("RGB", (20, 10), (90, 120, 200)).convert(mode)
    out = load_rgb(save(tmp_path / f"x.{fmt.lower()}", im, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.full((4, 4), 32768, dtype=np.uint16)
    out = load_rgb(save(tmp_path / "x.png", Image.fromarray(a)))
    assert 120 <= out.getpixel((0, 0))[0] <= 136


def test_transparency_goes_over_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_rgb(save(tmp_path / "x.png", im)).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_rgb(save(tmp_path / "x.jpg", im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_draft_decodes_large_jpegs_small(tmp_path):
    path = save(tmp_path / "big.jpg", Image.new("RGB", (1600, 800), (1, 2, 3)), "JPEG")
    assert load_rgb(path, draft_size=100).size == (200, 100)  # 1/8 scale, never below the size asked for


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "image file not found"),
    (lambda p: p.write_bytes(b""), "not an image file"),
    (lambda p: p.write_text("<html>not a photo</html>"), "not an image file"),
])
def test_bad_files_raise_one_clear_error(tmp_path, write, message):
    path = tmp_path / "bad.jpg"
    write(path)
    with pytest.raises(ShopeeError, match=message) as e:
        load_rgb(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ShopeeError, match="cannot be decoded"):
        load_rgb(path)


def test_decompression_bomb_is_refused(tmp_path):
    side = int((MAX_PIXELS * 1.2) ** 0.5)
    path = save(tmp_path / "bomb.png", Image.new("1", (side, side)), "PNG")
    with pytest.raises(ShopeeError, match="too large to decode safely"):
        load_rgb(path)
