import pickle

import numpy as np
import pytest
import torch

from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.data.images import collect_images
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.load import load_learner
from shopee_fastai.inference.predictions import top_k
from shopee_fastai.inference.torch_backends import predict_probs


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
    assert preds.outputs.shape == (5, 3) and np.allclose(preds.outputs.sum(1), np.ones(5), atol=1e-5)
    assert len(preds.failures) == 1 and "bad.jpg" in preds.failures[0]


def test_top_k_is_best_first():
    ranked = top_k(torch.tensor([[0.1, 0.7, 0.2]]), ["a", "b", "c"], k=2)
    assert ranked == [[{"label_group": "b", "probability": 0.7}, {"label_group": "c", "probability": 0.2}]]
    assert len(top_k(torch.tensor([[0.1, 0.9]]), ["a", "b"], k=9)[0]) == 2
    named = top_k(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"], k=2, titles={"b": "blue tea"})
    assert named == [[{"label_group": "b", "title": "blue tea", "probability": 0.7},
                      {"label_group": "c", "title": "", "probability": 0.2}]]


def test_prediction_uses_training_preprocessing(trained_cnn):
    # The same decoded image through the training pipeline's validation path gives the same probabilities.
    learn = trained_cnn.learn
    test_rows = S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST)
    dl = learn.dls.test_dl(test_rows.assign(split=S.TEST), num_workers=0)
    with learn.no_bar():
        expected, _ = learn.get_preds(dl=dl)
    got = predict_probs(learn, list(test_rows[D.PATH]), progress=False).outputs
    assert np.allclose(expected.numpy(), got, atol=1e-5)


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "model file not found"),
    (lambda p: p.write_bytes(b"\x80\x04"), "not a readable fastai learner"),
    (lambda p: torch.save({"not": "a learner"}, p), "not a fastai Learner"),
])
def test_load_learner_errors(tmp_path, write, message):
    path = tmp_path / "m.pkl"
    write(path)
    with pytest.raises(ShopeeError, match=message):
        load_learner(path)


def test_truncated_export_is_refused(trained_cnn, tmp_path):
    blob = trained_cnn.files.pkl.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ShopeeError, match="not a readable fastai learner"):
        load_learner(cut)


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
        load_learner(path)


def test_memory_stays_bounded_as_the_number_of_images_grows(trained_cnn, tmp_path):
    import json
    import resource
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3000):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    (folder / "01500_bad.jpg").write_bytes(b"\xff\xd8 not really")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(folder.glob("00[0-2]??.jpg")):
        (few / p.name).write_bytes(p.read_bytes())
    code = ("import resource, sys; from shopee_fastai.cli import app; "
            "sys.argv=['shopee-fastai','predict',sys.argv[1],'--model',sys.argv[2],'--json']; "
            "rc=0\ntry:\n    app()\nexcept SystemExit as e:\n    rc=e.code\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'RC', rc, file=sys.stderr)")
    def run(path):
        out = subprocess.run([sys.executable, "-c", code, str(path), str(trained_cnn.files.pkl)],
                             capture_output=True, text=True)
        rss = int(out.stderr.split("RSS ")[1].split()[0])
        return out, rss
    many_out, many_rss = run(folder)
    few_out, few_rss = run(few)
    assert len(many_out.stdout.splitlines()) == 3000  # the bad file did not stop the rest
    assert "01500_bad.jpg" in many_out.stderr and "RC 2" in many_out.stderr
    assert len(few_out.stdout.splitlines()) == 300
    assert many_rss < few_rss * 1.25  # 10x the images, about the same memory

