import os

import numpy as np
from PIL import Image

from shopee_fastai.data import cache as C


def photo(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return str(path)


def test_prepare_resizes_shorter_side_and_is_idempotent(tmp_path):
    root = tmp_path / "cache"
    big, small = photo(tmp_path / "big.jpg", 1600, 1000), photo(tmp_path / "small.jpg", 60, 40)
    result = C.prepare([big, small], side=100, root=root, progress=False)
    assert (result.written, result.reused, result.failed) == (2, 0, {})
    assert Image.open(C.cached_path(big, 100, root)).size == (160, 100)
    assert Image.open(C.cached_path(small, 100, root)).size == (60, 40)  # never enlarged
    again = C.prepare([big, small], side=100, root=root, progress=False)
    assert (again.written, again.reused) == (0, 2)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_changed_source_is_redone_and_bad_ones_listed(tmp_path):
    root = tmp_path / "cache"
    src = photo(tmp_path / "a.jpg", 300, 200)
    C.prepare([src], side=50, root=root, progress=False)
    old = C.cached_path(src, 50, root)
    photo(tmp_path / "a.jpg", 400, 200, seed=1)
    os.utime(src, ns=(1, 10**18))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    result = C.prepare([src, str(bad)], side=50, root=root, progress=False)
    assert result.written == 1 and list(result.failed) == [str(bad)]
    new = C.cached_path(src, 50, root)
    assert new != old and Image.open(new).size == (100, 50)


def test_use_cache_picks_the_smallest_side_that_serves(tmp_path):
    root = tmp_path / "cache"
    src = photo(tmp_path / "a.jpg", 800, 600)
    other = photo(tmp_path / "b.jpg", 800, 600)
    for side in (64, 128, 256):
        C.prepare([src], side=side, root=root, progress=False)
    assert C.best_side(100, root) == 128 and C.best_side(300, root) is None
    paths, hits = C.use_cache([src, other], 100, root)
    assert hits == 1 and paths[0] == str(C.cached_path(src, 128, root)) and paths[1] == other


def test_training_and_prediction_use_the_cache_with_the_same_results(trained_cnn, synthetic, tmp_path, monkeypatch):
    from shopee_fastai.inference.torch_backends import predict_probs

    monkeypatch.setenv("SHOPEE_FASTAI_CACHE", str(tmp_path / "own-cache"))  # other tests must not see these entries
    images = sorted((synthetic / "train_images").glob("*.jpg"))[:8]
    raw = predict_probs(trained_cnn.learn, images, progress=False).outputs
    C.prepare([str(p) for p in images], side=trained_cnn.card.input["size"], progress=False)
    cached = predict_probs(trained_cnn.learn, images, progress=False)
    assert cached.paths == images
    assert (cached.outputs.argmax(1) == raw.argmax(1)).all()
    assert np.abs(cached.outputs - raw).max() < 0.15
