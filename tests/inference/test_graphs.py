"""The ONNX graphs `train` writes beside a model: the first predict needs neither fastai nor torch; int8 on request."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from shopee_fastai.artifacts import ModelFiles
from shopee_fastai.cli import app
from shopee_fastai.config import TrainConfig
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.load import load_predictor
from shopee_fastai.inference.torch_backends import predict_probs

COLD = """
import json, sys
from pathlib import Path
from shopee_fastai.inference.load import load_predictor
predictor = load_predictor(Path(sys.argv[1]), precision=sys.argv[2])
got = predictor.outputs([Path(p) for p in json.loads(sys.argv[3])], progress=False)
print(json.dumps({"backend": predictor.backend.name, "why": predictor.why, "probs": got.outputs.tolist(),
                  "heavy": sorted(m for m in ("torch", "fastai") if m in sys.modules)}))
"""


def cold_predict(model, images, precision="auto"):
    out = subprocess.run([sys.executable, "-c", COLD, str(model), precision, json.dumps(images)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_train_writes_both_graphs_and_the_first_predict_imports_neither_fastai_nor_torch(trained_cnn, photos):
    files = trained_cnn.files
    assert files.onnx.is_file() and files.int8.is_file()
    want = predict_probs(trained_cnn.learn, photos, progress=False).outputs
    for model in (files.pkl, files.safetensors):
        got = cold_predict(model, photos)
        assert got["backend"] == "onnx" and got["heavy"] == []
        assert np.allclose(got["probs"], want, atol=1e-4)


def test_a_pkl_whose_graph_is_only_cached_predicts_without_fastai_or_torch(trained_cnn, photos, tmp_path):
    """A .pkl copied without its .onnx: the first predict exports the graph to the cache, later ones only read it."""
    alone = tmp_path / "alone.pkl"
    shutil.copy(trained_cnn.files.pkl, alone)
    assert not ModelFiles.beside(alone).onnx.exists()
    first = load_predictor(alone)  # exports the graph and caches it
    assert "cached" in first.why
    want = first.outputs(photos, progress=False).outputs
    got = cold_predict(alone, photos)
    assert got["backend"] == "onnx" and "cached" in got["why"] and got["heavy"] == []
    assert np.allclose(got["probs"], want, atol=1e-6)
    assert np.allclose(got["probs"], predict_probs(trained_cnn.learn, photos, progress=False).outputs, atol=1e-4)


def test_int8_graph_keeps_the_top_prediction(trained_cnn, photos):
    fp32 = load_predictor(trained_cnn.files.pkl).outputs(photos, progress=False).outputs
    got = cold_predict(trained_cnn.files.pkl, photos, "int8")
    assert got["heavy"] == []
    int8 = np.array(got["probs"])
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    assert not np.array_equal(int8, fp32)  # it is the quantised graph, not the fp32 one
    assert np.abs(int8 - fp32).max() < 0.1
    assert load_predictor(trained_cnn.files.int8).cfg["precision"] == "int8"
    # 7-bit weights: AVX2 without VNNI sums u8 x s8 pairs in 16 bits, which full-range weights saturate
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(trained_cnn.files.int8)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert weights and all(np.abs(w).max() <= 64 for w in weights)


def test_a_graph_left_from_other_weights_is_never_used(trained_cnn, synthetic, photos, tmp_path):
    """Retraining under the same name (or copying another .pkl over it) leaves the graphs describing other weights."""
    other = TrainConfig(data=synthetic, arch="cnn", size=trained_cnn.card.input["size"], bs=8, epochs=1, aug="none",
                        workers=0, split="random", models_dir=tmp_path / "other", seed=7)
    from shopee_fastai.training import fit_learner

    learn = fit_learner(other).learn
    mine = ModelFiles.of(tmp_path, "m")
    shutil.copy(trained_cnn.files.onnx, mine.onnx)
    shutil.copy(trained_cnn.files.int8, mine.int8)
    learn.export(mine.pkl.resolve())  # new weights, old graphs beside them
    got = load_predictor(mine.pkl)
    want = predict_probs(learn, photos, progress=False).outputs
    assert np.allclose(got.outputs(photos, progress=False).outputs, want, atol=1e-4)  # exported afresh from the .pkl
    with pytest.raises(ShopeeError, match="no int8 graph made from this model"):
        load_predictor(mine.pkl, precision="int8")


def test_int8_mistakes_are_one_line_errors(trained_cnn, synthetic, tmp_path):
    with pytest.raises(ShopeeError, match="--int8 runs the model's quantised ONNX graph"):
        load_predictor(trained_cnn.files.pkl, backend="torch", precision="int8")
    with pytest.raises(ShopeeError, match="--precision int8 is for inference"):
        TrainConfig(data=synthetic, precision="int8")


def test_export_onnx_writes_an_int8_graph_for_a_model_trained_elsewhere(trained_cnn, synthetic, tmp_path, photos):
    model = tmp_path / "elsewhere.safetensors"
    shutil.copy(trained_cnn.files.safetensors, model)
    cli = [sys.executable, "-m", "shopee_fastai", "export-onnx", "--model", str(model), "--int8"]
    out = subprocess.run(cli, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == ("error: --int8 calibrates on training photos; add --data DIR "
                                                         "(the model's training data)")
    assert not (tmp_path / "elsewhere.onnx").exists()
    done = CliRunner().invoke(app, [*cli[3:], "--data", str(synthetic)])  # the same command, in this process
    assert done.exit_code == 0, done.output
    assert (tmp_path / "elsewhere.int8.onnx").is_file()
    got = cold_predict(model, photos, "int8")
    assert got["backend"] == "onnx" and got["heavy"] == []
