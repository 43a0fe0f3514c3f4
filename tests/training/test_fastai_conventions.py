"""An exported .pkl behaves as fastai's tutorials expect: `load_learner` in a process that imports nothing of the
package but what unpickling pulls in, `predict` on a path or an image, `test_dl`, `show_results` and
`ClassificationInterpretation`."""

import json
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.learner import load_learner
from fastai.vision.core import PILImage
from matplotlib import pyplot as plt
from PIL import Image

from shopee_fastai.data import table as D

from ..conftest import COLOURS

matplotlib.use("Agg")  # show_results and the interpretation plots draw with pyplot
pytestmark = pytest.mark.filterwarnings("ignore:load_learner` uses Python's insecure pickle")  # the test's own files

# Only fastai and the pickle: what a user's own notebook or script does with an exported model.
PLAIN_PROCESS = """
import json, sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pandas as pd
from fastai.interpret import ClassificationInterpretation
from fastai.learner import load_learner
from fastai.vision.core import PILImage
from matplotlib import pyplot as plt
from PIL import Image

pkl, data, out = map(Path, sys.argv[1:])
learn = load_learner(pkl)
table = pd.read_csv(data / "train.csv", dtype=str)
table["path"] = [str(data / "train_images" / name) for name in table["image"]]
photo = table["path"][0]
got = {}
with learn.no_bar():
    for kind, item in [("str", photo), ("Path", Path(photo)), ("PILImage", PILImage.create(photo)),
                       ("PIL", Image.open(photo))]:
        label, index, probs = learn.predict(item)
        got[kind] = [str(label), int(index), probs.tolist()]
    got["test_dl"] = learn.get_preds(dl=learn.dls.test_dl(list(table["path"][:4])))[0].tolist()
    labelled = learn.dls.test_dl(table, with_labels=True)
    learn.show_results(dl=labelled, max_n=4)
    got["shown"] = len(plt.get_fignums())
    plt.close("all")
    interp = ClassificationInterpretation.from_learner(learn, dl=labelled)
    got["confusion"] = interp.confusion_matrix().tolist()
    got["most_confused"] = interp.most_confused()
    interp.plot_confusion_matrix()
    got["plotted"] = len(plt.gcf().axes)
    plt.close("all")
    learn.show_results(max_n=4)  # the validation rows travel with the export
    got["shown_valid"] = len(plt.get_fignums())
    got["valid_confusion"] = int(ClassificationInterpretation.from_learner(learn).confusion_matrix().sum())
got["modules"] = sorted(m for m in sys.modules if m.startswith("shopee_fastai"))
out.write_text(json.dumps(got))
"""


@pytest.fixture(scope="module")
def plain(trained_cnn, synthetic, tmp_path_factory):
    """What the exported learner did in a fresh process that never imported the package's CLI."""
    out = tmp_path_factory.mktemp("plain") / "got.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_PROCESS, str(trained_cnn.files.pkl), str(synthetic), str(out)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_pickle_loads_without_the_cli(plain):
    assert "shopee_fastai.cli" not in plain["modules"]


def test_show_results_and_interpretation_need_no_arguments_on_the_loaded_learner(plain, trained_cnn):
    card = json.loads(trained_cnn.files.card.read_text())
    assert plain["shown_valid"] >= 1 and plain["valid_confusion"] == card["split"]["valid"]
    assert "shopee_fastai.data.loaders" in plain["modules"]  # the image type the DataBlock names


def test_predict_takes_a_path_or_an_image_and_gives_one_answer(plain):
    label, index, probs = plain["str"]
    assert label == sorted(COLOURS)[index] and np.argmax(probs) == index
    for kind in ("Path", "PILImage", "PIL"):
        assert plain[kind][:2] == [label, index], kind
        assert np.allclose(plain[kind][2], probs, atol=1e-5), kind


def test_test_dl_and_get_preds_agree_with_predict(plain):
    assert np.array(plain["test_dl"]).shape == (4, len(COLOURS))
    assert np.allclose(plain["test_dl"][0], plain["str"][2], atol=1e-5)


def test_show_results_and_interpretation_on_a_labelled_test_dl(plain):
    assert plain["shown"] >= 1 and plain["plotted"] >= 1
    confusion = np.array(plain["confusion"])
    assert confusion.shape == (len(COLOURS), len(COLOURS)) and confusion.sum() == 12 * len(COLOURS)
    assert np.trace(confusion) >= 0.8 * confusion.sum()  # the fixture's model beats chance by far
    assert all(len(row) == 3 for row in plain["most_confused"])  # (actual, predicted, count)


def test_show_results_and_interpretation_on_the_trained_learner(trained_cnn):
    """The tutorial's flow right after training: no DataLoader given, the validation set is used."""
    learn = trained_cnn.learn
    plt.close("all")
    with learn.no_bar():
        learn.show_results(max_n=4)
        assert plt.get_fignums()
        interp = ClassificationInterpretation.from_learner(learn)
        interp.plot_confusion_matrix()
        interp.plot_top_losses(2)
    assert interp.confusion_matrix().sum() == len(learn.dls.valid_ds)
    assert isinstance(interp.most_confused(), list)
    plt.close("all")


def rotated_jpeg(path):
    """Red left, blue right, saved with EXIF orientation 6: upright, it is red on top."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (220, 30, 30)
    pixels[:, 40:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def transparent_png(path):
    pixels = np.zeros((50, 30, 4), np.uint8)
    pixels[..., 1] = 200
    pixels[:, :15, 3] = 255  # the right half transparent: over white, as the decoder paints it
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def grey_png(path):
    Image.fromarray(np.linspace(0, 255, 60 * 40).astype(np.uint8).reshape(60, 40), "L").save(path)
    return path


# fastai's `PILImage.create` drops the alpha channel itself (convert to RGB), before the learner sees the image.
@pytest.mark.parametrize("write, suffix, fastai_keeps_it", [(rotated_jpeg, "jpg", True), (transparent_png, "png", False),
                                                             (grey_png, "png", True)])
def test_an_opened_image_is_decoded_as_its_file_is(trained_cnn, tmp_path, write, suffix, fastai_keeps_it):
    """EXIF orientation and the mode conversion apply to an image handed over as they do to its file."""
    learn = load_learner(trained_cnn.files.pkl)
    photo = write(tmp_path / f"photo.{suffix}")
    items = [photo, str(photo), Image.open(photo)] + ([PILImage.create(photo)] if fastai_keeps_it else [])
    batches = [learn.dls.test_dl([item]).one_batch()[0] for item in items]
    for batch in batches[1:]:
        assert torch.equal(batch, batches[0])


def test_an_opened_image_is_not_changed_by_predict(trained_cnn, synthetic):
    learn = load_learner(trained_cnn.files.pkl)
    photo = Image.open(synthetic / "train_images" / pd.read_csv(synthetic / "train.csv")["image"][0])
    before = np.asarray(photo).copy()
    with learn.no_bar():
        learn.predict(photo)
    assert not isinstance(photo, PILImage) and np.array_equal(np.asarray(photo), before)


def test_table_paths_still_feed_the_data_block(trained_cnn, synthetic):
    """Rows of the package's own table (training's input) go through the same type transform as before."""
    learn = load_learner(trained_cnn.files.pkl)
    rows = D.read_table(synthetic).head(3)
    with learn.no_bar():
        from_rows, _ = learn.get_preds(dl=learn.dls.test_dl(rows))
        from_paths, _ = learn.get_preds(dl=learn.dls.test_dl(list(rows[D.PATH])))
    assert torch.allclose(from_rows, from_paths, atol=1e-6)
