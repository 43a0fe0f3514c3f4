"""The Python API (`shopee_fastai.api`) over real learners and files, and the README's example run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from PIL import Image

import shopee_fastai.api as sf
from shopee_fastai.errors import ShopeeError

from ..conftest import SIZE

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text().split("<!-- python-example -->", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.timeout(900)  # trains the default recipe on the sample: a minute or two on 2 idle cores
def test_the_readme_example_runs_as_written_in_an_empty_folder(tmp_path):
    """On the bundled sample, offline, ending with a prediction."""
    out = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "label_group" in last and "probability" in last, out.stdout[-2000:]


@pytest.mark.parametrize("file", ["pkl", "safetensors", "onnx"])
def test_a_model_takes_paths_and_pil_images_alike(trained_cnn, synthetic, file):
    model = sf.load(getattr(trained_cnn.files, file))
    photos = sorted((synthetic / "train_images").glob("*.jpg"))[:4]
    by_path = model.outputs(photos).outputs
    by_image = model.outputs([Image.open(p) for p in photos]).outputs
    np.testing.assert_allclose(by_image, by_path, atol=1e-5)
    best, same = model.predict(photos[0]), model.predict(Image.open(photos[0]))
    # A path is JPEG-draft decoded and an image is not: same best group, probabilities alike to the rounded 6th decimal.
    assert best[0]["label_group"] == same[0]["label_group"] and best[0]["label_group"] in model.classes
    by_group = {r["label_group"]: r["probability"] for r in same}
    assert all(abs(r["probability"] - by_group.get(r["label_group"], 0.0)) <= 2e-6 for r in best)
    assert len(model.predict(photos, k=2)) == 4 and len(best) == min(5, len(model.classes))


def test_an_unreadable_photo_is_one_error_naming_it(trained_cnn, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    with pytest.raises(ShopeeError, match="notes.jpg"):
        sf.load(trained_cnn.files.onnx).predict(bad)


def test_dataloaders_and_learner_are_fastais_own(synthetic, tmp_path):
    settings = dict(arch="cnn", size=SIZE, bs=8, aug="none", workers=0, top_groups=0, split="random",
                    models_dir=tmp_path)
    dls = sf.dataloaders(synthetic, **settings)
    assert isinstance(dls, DataLoaders) and list(dls.vocab) == ["1001", "2002", "3003"]
    x, y = dls.one_batch()
    assert tuple(x.shape[1:]) == (3, SIZE, SIZE) and len(y) == 8
    learn = sf.learner(synthetic, **settings)
    assert isinstance(learn, Learner)
    learn.fit_one_cycle(1, 1e-3)  # the fastai way, on this package's DataBlock
    with pytest.raises(ShopeeError, match="not both"):
        sf.learner(sf.TrainConfig(data=synthetic), arch="cnn")
    with pytest.raises(ShopeeError, match="--bs 0"):
        sf.learner(synthetic, bs=0)


def test_match_and_embed_agree_with_the_cli_path(arcface, groups):
    emb = sf.embed(sorted((groups / "train_images").glob("*.jpg"))[:6], arcface.files.pkl)
    assert emb.shape[0] == 6 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    table, result = sf.match(groups, arcface.files.pkl)
    assert len(result.matches) == len(table) and result.score.f1 > 0.5
    assert result.settings.threshold == pytest.approx(arcface.card.matching["threshold"])


def test_every_api_function_is_in_the_documented_table():
    import inspect

    import shopee_fastai.api as sf

    doc = (ROOT / "docs" / "python-api.md").read_text()
    functions = [n for n in sf.__all__ if inspect.isfunction(getattr(sf, n))]
    assert "apply_fixes" in functions and all(f"`sf.{n}(" in doc for n in functions), functions
