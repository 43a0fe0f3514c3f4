import pickle

import pytest
import torch

from shopee_fastai import data as D
from shopee_fastai.errors import ShopeeError
from shopee_fastai.predict import collect_images, load_model, predict_probs, top_k


def test_collect_images_expands_folders_and_rejects_missing(synthetic, tmp_path):
    files = collect_images([synthetic / "train_images"])
    assert len(files) == 36 and files == sorted(files)
    with pytest.raises(ShopeeError, match="no such file or folder"):
        collect_images([tmp_path / "nope.jpg"])
    with pytest.raises(ShopeeError, match="no images"):
        collect_images([tmp_path])


def test_probabilities_sum_to_one_and_unreadable_images_are_listed(trained_cnn, synthetic, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    images = sorted((synthetic / "train_images").glob("*.jpg"))[:5]
    preds = predict_probs(trained_cnn.learn, [images[0], bad, *images[1:]], progress=False)
    assert preds.paths == images
    assert torch.allclose(preds.probs.sum(1), torch.ones(5), atol=1e-5)
    assert len(preds.failures) == 1 and "bad.jpg" in preds.failures[0]


def test_top_k_is_best_first():
    ranked = top_k(torch.tensor([[0.1, 0.7, 0.2]]), ["a", "b", "c"], k=2)
    assert ranked == [[{"label_group": "b", "probability": 0.7}, {"label_group": "c", "probability": 0.2}]]
    assert len(top_k(torch.tensor([[0.1, 0.9]]), ["a", "b"], k=9)[0]) == 2


def test_prediction_uses_training_preprocessing(trained_cnn):
    # The same decoded image through the training pipeline's validation path gives the same probabilities.
    learn = trained_cnn.learn
    test_rows = D.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, D.TEST)
    dl = learn.dls.test_dl(test_rows.assign(split=D.TEST), num_workers=0)
    with learn.no_bar():
        expected, _ = learn.get_preds(dl=dl)
    got = predict_probs(learn, list(test_rows[D.PATH]), progress=False).probs
    assert torch.allclose(expected, got, atol=1e-5)


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "model file not found"),
    (lambda p: p.write_bytes(b"\x80\x04"), "not a readable fastai learner"),
    (lambda p: torch.save({"not": "a learner"}, p), "not a fastai Learner"),
])
def test_load_model_errors(tmp_path, write, message):
    path = tmp_path / "m.pkl"
    write(path)
    with pytest.raises(ShopeeError, match=message):
        load_model(path)


def test_truncated_export_is_refused(trained_cnn, tmp_path):
    blob = trained_cnn.paths["pkl"].read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ShopeeError, match="not a readable fastai learner"):
        load_model(cut)


def test_learner_whose_code_is_missing_names_the_fix(tmp_path, monkeypatch):
    # A pickle that refers to a module this environment lacks: fastai alone would raise a confusing error.
    import importlib
    import sys

    (tmp_path / "gone_module_xyz.py").write_text("class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("gone_module_xyz")
    path = tmp_path / "m.pkl"
    torch.save(module.Model(), path, pickle_module=pickle)
    (tmp_path / "gone_module_xyz.py").unlink()
    del sys.modules["gone_module_xyz"]
    importlib.invalidate_caches()
    with pytest.raises(ShopeeError, match="code this learner was exported with cannot be found"):
        load_model(path)
