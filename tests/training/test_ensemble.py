"""`train --ensemble N`: members trained on one cache of the frozen body, exported as one model that averages them."""

import numpy as np
import pytest
import torch

from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data.table import PATH
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.load import load_predictor
from shopee_fastai.inference.torch_backends import predict_probs
from shopee_fastai.nets.ensemble import Ensemble

from ..conftest import COLOURS, SIZE, fit_and_export
from .test_checkpoint import HEAD_EPOCHS, default_recipe_config


@pytest.fixture(scope="module")
def ensemble(synthetic, tmp_path_factory):
    return fit_and_export(default_recipe_config(synthetic, tmp_path_factory.mktemp("m"), ensemble=2, checkpoint_every=0, name=None))


def test_members_train_one_after_another_and_each_is_scored(ensemble):
    card = ensemble.card
    assert card.name == f"{OFFLINE_ARCH}-ensemble2" and isinstance(ensemble.learn.model, Ensemble)
    assert [h["phase"] for h in card.history] == ["head 1/2"] * HEAD_EPOCHS + ["head 2/2"] * HEAD_EPOCHS
    assert len(card.members) == 2 and all(m["test_accuracy"] is not None for m in card.members)
    assert card.test_accuracy > 1 / len(COLOURS)
    a, b = (m[1][-1].weight for m in ensemble.learn.model.members)
    assert not torch.equal(a, b)  # each member its own seed


def test_the_ensemble_averages_its_members_probabilities(ensemble):
    learn = ensemble.learn
    images = list(ensemble.prep.rows(S.TEST)[PATH])
    whole = predict_probs(learn, images, progress=False).outputs
    model = learn.model
    members = []
    try:
        for k in range(len(model.members)):
            learn.model = model.member(k)
            members.append(predict_probs(learn, images, progress=False).outputs)
    finally:
        learn.model = model
    assert np.allclose(whole, np.mean(members, axis=0), atol=1e-5)


def test_every_export_of_an_ensemble_predicts_alike(ensemble):
    images = list(ensemble.prep.rows(S.TEST)[PATH])
    want = predict_probs(ensemble.learn, images, progress=False).outputs
    files = ensemble.files
    for model, backend in ((files.pkl, "fastai"), (files.safetensors, "torch"), (files.onnx, "onnx"), (files.pkl, "auto")):
        got = load_predictor(model, backend=backend).outputs(images, progress=False).outputs
        assert np.allclose(got, want, atol=1e-4), (model, backend)


@pytest.mark.parametrize("extra, message", [
    ({"loss": "arcface"}, "--ensemble 2: averages classifiers"),
    ({"epochs": 1}, "--ensemble 2: averages classifiers"),
    ({"top_stages": 0}, "--ensemble 2: averages classifiers"),
])
def test_ensembles_of_what_cannot_share_a_cache_are_refused(synthetic, extra, message):
    with pytest.raises(ShopeeError, match=message):
        TrainConfig(data=synthetic, arch=OFFLINE_ARCH, pretrained=True, ensemble=2, **extra)
    with pytest.raises(ShopeeError, match="--ensemble 0: must be at least 1"):
        TrainConfig(data=synthetic, arch=OFFLINE_ARCH, pretrained=True, ensemble=0)


def test_a_killed_ensemble_resumes_in_the_member_it_was_training(synthetic, tmp_path, ensemble):
    import json
    import os
    import signal
    import subprocess
    import time

    from .test_checkpoint import default_recipe_cli

    models = tmp_path / "m"
    cmd = default_recipe_cli(synthetic, models, "--ensemble", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, deadline = models / "r.ckpt.json", time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        saved = json.loads(state.read_text()) if state.is_file() else {}
        if saved.get("phase") == "head 2/2" and saved["epochs_done"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from shopee_fastai.training import train

    train(default_recipe_config(synthetic, models, ensemble=2, resume=True))
    card = json.loads((models / "r.json").read_text())
    assert [h["phase"] for h in card["history"]] == ["head 1/2"] * HEAD_EPOCHS + ["head 2/2"] * HEAD_EPOCHS
    assert len(card["members"]) == 2 and card["test_accuracy"] > 1 / len(COLOURS)
    # the same epochs as the uninterrupted ensemble: the checkpoint holds every random state
    assert np.allclose([h["valid_loss"] for h in card["history"]], [h["valid_loss"] for h in ensemble.card.history], atol=1e-4)
