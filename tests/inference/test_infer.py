import numpy as np
import pytest
import torch
from PIL import Image

from shopee_fastai.config import Backend, cache_dir
from shopee_fastai.data.images import crop_resize, decode
from shopee_fastai.device import cpu_has_bf16
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference import load as L
from shopee_fastai.inference.backends import FastPredictor
from shopee_fastai.inference.export import learner_config, write_onnx
from shopee_fastai.inference.load import load_predictor
from shopee_fastai.inference.torch_backends import TorchBackend, predict_probs


@pytest.fixture(scope="module")
def reference(trained_cnn, photos):
    return predict_probs(trained_cnn.learn, photos, progress=False).outputs


def test_crop_resize_is_fastais_validation_resize(tmp_path):
    from fastai.vision.augment import Resize
    from fastai.vision.core import PILImage

    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    expected = np.asarray(Resize(24)(PILImage(im), split_idx=1))
    assert np.array_equal(np.asarray(crop_resize(im, 24)), expected)


def test_torch_backend_predicts_like_the_learner(trained_cnn, photos, reference):
    cfg = learner_config(trained_cnn.learn)
    model = FastPredictor(TorchBackend(trained_cnn.learn.model, cfg), cfg, draft=False)
    got = model.outputs(photos, bs=3, progress=False)
    assert [str(p) for p in got.paths] == photos
    assert np.allclose(got.outputs, reference, atol=1e-4)


def test_onnx_export_predicts_like_the_learner_and_carries_its_config(trained_cnn, photos, reference, tmp_path):
    cfg = learner_config(trained_cnn.learn)
    dest = write_onnx(trained_cnn.learn.model, cfg, tmp_path / "m.onnx")
    model = load_predictor(dest)
    assert model.backend.name == "onnx" and model.cfg == cfg and model.vocab == cfg["classes"]
    assert np.allclose(model.outputs(photos, progress=False).outputs, reference, atol=1e-4)  # these are small: no draft


def test_a_model_without_its_graph_beside_exports_one_once_and_caches_it(trained_cnn, photos, reference, tmp_path):
    import shutil

    from shopee_fastai.io import file_key

    alone = tmp_path / "alone.pkl"  # a .pkl copied without its .onnx (as from another machine)
    shutil.copy(trained_cnn.files.pkl, alone)
    graph = cache_dir() / "onnx" / f"alone-{file_key(alone)}.onnx"
    assert not graph.exists()
    first = load_predictor(alone)
    assert first.backend.name == "onnx" and graph.is_file()
    stamp = graph.stat().st_mtime_ns
    second = load_predictor(alone)
    assert graph.stat().st_mtime_ns == stamp  # reused, not re-exported
    assert np.allclose(second.outputs(photos, progress=False).outputs, reference, atol=1e-4)


def test_every_backend_agrees_and_lists_bad_images(trained_cnn, photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    images = [photos[0], str(bad), *photos[1:]]
    results = {b: load_predictor(trained_cnn.files.pkl, backend=b).outputs(images, progress=False)
               for b in ("fastai", "torch", "onnx")}
    for b, preds in results.items():
        assert [str(p) for p in preds.paths] == photos, b
        assert len(preds.failures) == 1 and "bad.jpg" in preds.failures[0], b
        assert np.allclose(preds.outputs, results["fastai"].outputs, atol=1e-4), b


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_keeps_the_top_prediction(trained_cnn, photos, reference):
    got = load_predictor(trained_cnn.files.pkl, backend="torch", precision="bf16").outputs(photos, progress=False)
    assert (got.outputs.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert np.allclose(got.outputs, reference, atol=0.05)


def test_draft_decoding_keeps_large_photos_close(tmp_path):
    big = tmp_path / "big.jpg"
    yy, xx = np.mgrid[0:800, 0:1000]
    Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)).save(big, quality=95)
    full, fast = decode(big, 100, draft=False), decode(big, 100, draft=True)
    assert full.shape == fast.shape == (100, 100, 3)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 8


@pytest.mark.parametrize("backend, suffix, message", [
    ("fastai", "safetensors", "needs the .pkl learner"),
    ("torch", "onnx", "runs on --backend onnx only"),
    ("cuda", "pkl", "choose one of"),
])
def test_backend_mismatches_are_one_line_errors(trained_cnn, tmp_path, backend, suffix, message):
    path = getattr(trained_cnn.files, suffix) if suffix != "onnx" else tmp_path / "m.onnx"
    if suffix == "onnx":
        write_onnx(trained_cnn.learn.model, learner_config(trained_cnn.learn), path)
    with pytest.raises(ShopeeError, match=message):
        load_predictor(path, backend=backend)


def test_every_backend_has_one_registry_entry_listed_in_the_order_errors_name_them():
    assert list(L.BACKENDS) == [Backend.onnx, Backend.torch, Backend.fastai] and set(Backend) == {Backend.auto, *L.BACKENDS}


def test_broken_or_foreign_onnx_files_are_refused(trained_cnn, tmp_path):
    cut = tmp_path / "cut.onnx"
    write_onnx(trained_cnn.learn.model, learner_config(trained_cnn.learn), cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(ShopeeError, match="not a readable ONNX model"):
        load_predictor(cut)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(foreign), dynamo=False)
    with pytest.raises(ShopeeError, match="without a shopee-fastai config"):
        load_predictor(foreign)


def test_auto_falls_back_to_torch_without_onnxruntime(trained_cnn, photos, reference, monkeypatch):
    monkeypatch.setattr(L, "onnx_available", lambda: False)  # as on a machine without the package
    model = load_predictor(trained_cnn.files.safetensors)
    assert model.backend.name == "torch" and model.backend.precision == "fp32"
    with pytest.raises(ShopeeError, match="runs fp32"):
        load_predictor(trained_cnn.files.pkl, backend="onnx", precision="bf16")


def test_tta_predicts_with_the_learners_augmentations_and_needs_the_pkl(trained_cnn, photos, tmp_path):
    from fastai.torch_core import set_seed

    model = load_predictor(trained_cnn.files.pkl, tta=True)
    set_seed(0)
    got = model.outputs(photos, progress=False)
    set_seed(0)
    want = predict_probs(model.learn, photos, progress=False, tta=True)
    plain = predict_probs(model.learn, photos, progress=False)
    assert np.allclose(got.outputs, want.outputs, atol=1e-5)
    # the augmented passes change the outputs; a confident model saturates its probabilities, so compare logs
    assert not np.allclose(np.log(got.outputs + 1e-30), np.log(plain.outputs + 1e-30))
    onnx = tmp_path / "m.onnx"
    write_onnx(trained_cnn.learn.model, learner_config(trained_cnn.learn), onnx)
    for path, backend in ((trained_cnn.files.safetensors, "auto"), (trained_cnn.files.pkl, "torch"), (onnx, "auto")):
        with pytest.raises(ShopeeError, match="--tta runs the fastai learner"):
            load_predictor(path, backend=backend, tta=True)
    with pytest.raises(ShopeeError, match="runs fp32"):
        load_predictor(trained_cnn.files.pkl, precision="bf16", tta=True)
