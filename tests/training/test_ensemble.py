"""`train --ensemble N`: members trained on one cache of the frozen body, exported as one model that averages them."""

import numpy as np
import pytest
import torch

from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data.table import LABEL, PATH
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.embed import embed_images
from shopee_fastai.inference.load import load_predictor
from shopee_fastai.inference.torch_backends import predict_probs
from shopee_fastai.nets.ensemble import Ensemble
from shopee_fastai.training.features import fold_views

from ..conftest import COLOURS, SIZE, fit_and_export
from .test_checkpoint import HEAD_EPOCHS, default_recipe_config
from .test_embedding import chance_f1


def member_outputs(learn, images) -> list:
    """Each member's outputs alone, through the learner's own pipeline."""
    model, out = learn.model, []
    try:
        for k in range(len(model.members)):
            learn.model = model.member(k)
            out.append(predict_probs(learn, images, progress=False).outputs)
    finally:
        learn.model = model
    return out


@pytest.fixture(scope="module")
def ensemble(synthetic, tmp_path_factory):
    return fit_and_export(default_recipe_config(synthetic, tmp_path_factory.mktemp("m"), ensemble=2, checkpoint_every=0, name=None,
                                                member_folds=True))  # the default on the leak-free split


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
    assert np.allclose(whole, np.mean(member_outputs(learn, images), axis=0), atol=1e-5)


def test_every_export_of_an_ensemble_predicts_alike(ensemble):
    images = list(ensemble.prep.rows(S.TEST)[PATH])
    want = predict_probs(ensemble.learn, images, progress=False).outputs
    files = ensemble.files
    for model, backend in ((files.pkl, "fastai"), (files.safetensors, "torch"), (files.onnx, "onnx"), (files.pkl, "auto")):
        got = load_predictor(model, backend=backend).outputs(images, progress=False).outputs
        assert np.allclose(got, want, atol=1e-4), (model, backend)



def test_the_accuracy_recipe_predicts_an_ensemble_with_tta(ensemble):
    """`predict --model <ensemble>.pkl --tta`: fastai's augmented passes over the averaged members, still probabilities."""
    images = list(ensemble.prep.rows(S.TEST)[PATH])
    plain = load_predictor(ensemble.files.pkl, backend="fastai").outputs(images, progress=False).outputs
    tta = load_predictor(ensemble.files.pkl, tta=True).outputs(images, progress=False).outputs
    assert tta.shape == plain.shape and np.allclose(tta.sum(axis=1), 1, atol=1e-4)
    assert not np.allclose(tta, plain, atol=1e-4)  # the augmented passes count

def test_members_train_on_all_but_a_fold_of_their_own_and_are_scored_there(ensemble):
    """Member folds (the default on the leak-free split): member 2 trains on the valid photos too, each member is scored on its own fold alone."""
    card, prep = ensemble.card, ensemble.prep
    assert card.split["member_folds"] == [int(prep.folds.eq(k).sum()) for k in (0, 1)] and min(card.split["member_folds"]) > 0
    assert card.test_accuracy > 1 / len(COLOURS)
    sizes = card.split["member_folds"]
    pooled = sum(m["valid_accuracy"] * n for m, n in zip(card.members, sizes)) / sum(sizes)
    assert card.valid_accuracy == pytest.approx(pooled, abs=1e-4)
    paths = prep.fold_of_path()
    sets = {"train": (torch.arange(2 * len(paths)).float(), torch.zeros(2 * len(paths), dtype=torch.long)),
            "photos": list(paths) * 2, "plain": len(paths)}
    for k in (0, 1):
        train, valid = fold_views(sets, paths, k)
        seen = {sets["photos"][int(i)] for i in train.batch(list(range(len(train))))[0]}
        mine = {p for p, f in paths.items() if f == k}
        assert not seen & mine and seen | mine == set(paths)  # every other photo, all its views
        assert {sets["photos"][int(i)] for i in valid.batch(list(range(len(valid))))[0]} == mine


def test_member_folds_need_a_classifier_ensemble(synthetic):
    with pytest.raises(ShopeeError, match="--member-folds gives each member"):
        TrainConfig(data=synthetic, arch=OFFLINE_ARCH, pretrained=True, ensemble=1, member_folds=True).resolved(7)


@pytest.fixture(scope="module")
def arcface_ensemble(groups, tmp_path_factory):
    """Two ArcFace embeddings on one cache, without the refit, exported as one model."""
    return fit_and_export(TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", size=SIZE,
                                      head_epochs=2, holdout="^val_", workers=0, ensemble=2, refit=False,
                                      models_dir=tmp_path_factory.mktemp("m")))


def test_an_embedding_ensemble_averages_its_members_directions_in_every_export(arcface_ensemble):
    learn, files = arcface_ensemble.learn, arcface_ensemble.files
    assert files.pkl.name == f"{OFFLINE_ARCH}-arcface-ensemble2.pkl" and learn.model.embedding
    images = list(arcface_ensemble.prep.rows(S.TEST)[PATH])
    whole = predict_probs(learn, images, progress=False).outputs
    members = member_outputs(learn, images)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # each member its own seed
    mean = np.mean(members, axis=0)
    assert np.allclose(whole, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(load_predictor(files.pkl, backend="fastai").outputs(images, progress=False).outputs, whole, atol=1e-5)
    ref = embed_images(images, files.pkl)  # the fast path's own decoding: one preprocessing for every file
    for path in (files.safetensors, files.onnx):
        assert np.allclose(embed_images(images, path), ref, atol=1e-4), path
    m, prep = arcface_ensemble.card.matching, arcface_ensemble.prep
    unseen = prep.rows(S.TEST)[prep.rows(S.TEST)[LABEL].isin(set(prep.rows(S.VALID)[LABEL]))]
    assert m["calibrated"] and m["test_f1_unseen"] >= chance_f1(unseen[LABEL].tolist()) + 0.2


@pytest.mark.parametrize("extra, message", [
    ({"epochs": 1}, "--ensemble 2: averages models"),
    ({"top_stages": 0}, "--ensemble 2: averages models"),
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
    cmd = default_recipe_cli(synthetic, models, "--ensemble", "2", "--member-folds")
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

    train(default_recipe_config(synthetic, models, ensemble=2, member_folds=True, resume=True))
    card = json.loads((models / "r.json").read_text())
    assert [h["phase"] for h in card["history"]] == ["head 1/2"] * HEAD_EPOCHS + ["head 2/2"] * HEAD_EPOCHS
    assert len(card["members"]) == 2 and card["test_accuracy"] > 1 / len(COLOURS)
    # the same epochs as the uninterrupted ensemble: the checkpoint holds every random state
    assert np.allclose([h["valid_loss"] for h in card["history"]], [h["valid_loss"] for h in ensemble.card.history], atol=1e-4)
