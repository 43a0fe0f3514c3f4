import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from shopee_fastai.artifacts import META_KEY
from shopee_fastai.config import TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.backends import FastPredictor
from shopee_fastai.inference.export import write_safetensors
from shopee_fastai.inference.load import load_safetensors
from shopee_fastai.inference.torch_backends import TorchBackend, predict_probs
from shopee_fastai.training import fit_learner

from ..conftest import SIZE


def predictor(path):
    """The weights-only model on the torch backend, full decoding (as fastai's own pipeline decodes)."""
    net, cfg = load_safetensors(path)
    return FastPredictor(TorchBackend(net, cfg), cfg, draft=False)


def test_hand_cnn_weights_only_export_predicts_like_the_pickle(trained_cnn):
    safe = trained_cnn.files.safetensors
    assert safe.is_file()  # train writes it beside the .pkl
    images = list(S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST)[D.PATH])
    expected = predict_probs(trained_cnn.learn, images, progress=False).outputs
    model = predictor(safe)
    assert model.vocab == [str(v) for v in trained_cnn.learn.dls.vocab]
    assert np.allclose(model.outputs(images, progress=False).outputs, expected, atol=1e-4)


def test_timm_weights_only_export_predicts_like_the_learner(synthetic, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    trained = fit_learner(TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, size=SIZE,
                                      head_epochs=3, workers=0, models_dir=tmp_path))
    write_safetensors(trained.learn, trained.card.arch, tmp_path / "m.safetensors")
    images = sorted(str(p) for p in (synthetic / "train_images").glob("*.jpg"))[:6]
    expected = predict_probs(trained.learn, images, progress=False).outputs
    assert np.allclose(predictor(tmp_path / "m.safetensors").outputs(images, progress=False).outputs, expected, atol=1e-4)


def test_bad_safetensors_files_get_one_line(trained_cnn, tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ShopeeError, match="without a shopee-fastai config"):
        load_safetensors(plain)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(trained_cnn.files.safetensors.read_bytes()[:500])
    with pytest.raises(ShopeeError, match="not a readable safetensors file"):
        load_safetensors(cut)
    with pytest.raises(ShopeeError, match="model file not found"):
        load_safetensors(tmp_path / "none.safetensors")
    from safetensors import safe_open

    with safe_open(str(trained_cnn.files.safetensors), "pt") as f:
        cfg, tensors = json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd), metadata={META_KEY: json.dumps({**cfg, "arch": "resnet_from_the_future"})})
    with pytest.raises(ShopeeError, match="not known to this version"):
        load_safetensors(odd)


def test_titles_travel_with_every_model_format(trained_cnn, tmp_path):
    """Each class's most common title is in the card, the safetensors and ONNX metadata, and every predictor."""
    import shutil

    from shopee_fastai.artifacts import ModelCard, model_titles
    from shopee_fastai.inference.export import write_onnx
    from shopee_fastai.inference.load import load_network, load_predictor

    expected = {c: f"product {c}" for c in ("1001", "2002", "3003")}
    files = trained_cnn.files
    assert ModelCard.read(files.pkl).titles == expected
    # apart from its card, so the titles can only come from the file's own metadata
    alone = tmp_path / "alone.safetensors"
    shutil.copy(files.safetensors, alone)
    assert model_titles(alone, load_network(alone)[1]) == expected
    onnx_file = write_onnx(*load_network(files.pkl), tmp_path / "alone.onnx")
    for model in (files.pkl, files.safetensors, alone, onnx_file):
        assert load_predictor(model).titles == expected, model


def test_a_card_without_titles_reads_as_no_titles(trained_cnn, tmp_path):
    from shopee_fastai.artifacts import ModelCard, model_titles

    card = json.loads(trained_cnn.files.card.read_text())
    del card["titles"]
    (tmp_path / "old.json").write_text(json.dumps(card))
    (tmp_path / "old.pkl").write_bytes(b"")
    assert ModelCard.read(tmp_path / "old.pkl").titles == {} and model_titles(tmp_path / "old.pkl") == {}
