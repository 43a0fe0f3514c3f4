"""Embedding models for matching: `train --loss arcface/subcenter`, calibrated on groups they never saw."""

import json
from dataclasses import replace

import numpy as np
import pytest
from fastai.learner import load_learner

from shopee_fastai import matching as M
from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data.table import LABEL, PATH
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.embed import embed_images

from ..conftest import SIZE
from .test_checkpoint import interrupt_after_three_epochs


def chance_f1(labels, seed=0) -> float:
    """What matching scores with embeddings that know nothing, calibrated on the labels themselves."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(labels), 64)).astype(np.float32)
    return M.calibrate(emb / np.linalg.norm(emb, axis=1, keepdims=True), labels).score.f1


def test_validation_groups_are_never_trained_on(arcface):
    split = arcface.prep.split
    train_groups = set(arcface.prep.rows(S.TRAIN)[LABEL])
    valid_groups = set(arcface.prep.rows(S.VALID)[LABEL])
    assert valid_groups and train_groups and not train_groups & valid_groups
    assert (split == S.TEST).sum() == 20 * 3  # every val_ photo, from every group
    assert arcface.card.config["top_groups"] == 0  # an embedding trains on every group


def test_arcface_matches_groups_it_never_saw_better_than_chance(arcface):
    m = arcface.card.matching
    unseen = arcface.prep.rows(S.TEST)
    unseen = unseen[unseen[LABEL].isin(set(arcface.prep.rows(S.VALID)[LABEL]))]
    assert m["valid_groups"] == unseen[LABEL].nunique() >= 2
    assert m["test_f1_unseen"] >= chance_f1(unseen[LABEL].tolist()) + 0.2
    assert M.THRESHOLD_GRID[0] <= m["threshold"] <= M.THRESHOLD_GRID[-1] and isinstance(m["min2"], bool)
    assert m["on_grid_edge"] == (m["threshold"] in (M.THRESHOLD_GRID[0], M.THRESHOLD_GRID[-1]))
    assert m["blend"] is False  # blending is asked for at match time, never chosen by calibration
    assert arcface.card.valid_accuracy is None  # accuracy over classes means nothing for unseen groups
    assert "match_f1" in arcface.card.history[-1]


def test_the_shipped_network_is_calibrated_on_groups_it_never_trained_on(arcface):
    """By default the network in the model file is the one whose settings the card holds: calibrated on held-out
    groups, as the mean over Shopee-shaped draws of them."""
    valid = arcface.prep.rows(S.VALID)
    labels = valid[LABEL].astype(str).tolist()
    assert not set(labels) & set(arcface.prep.rows(S.TRAIN)[LABEL].astype(str))
    m = arcface.card.matching
    assert "refit" not in m and "calibration_run" not in m and arcface.card.config["refit"] is False
    emb = embed_images(list(valid[PATH]), arcface.files.pkl, progress=False)  # the exported network
    again = M.calibrate(emb, labels, blend=False, draws=M.shopee_draws(labels, arcface.card.config["seed"]))
    assert m["valid_f1"] == pytest.approx(again.score.f1, abs=0.02)
    assert m["threshold"] == pytest.approx(again.settings.threshold, abs=0.051)


def test_refit_trains_on_more_groups_and_keeps_the_first_runs_settings(arcface, groups, trained_cnn, tmp_path):
    """--refit: the first run (the `arcface` fixture's, same seed) calibrates on its held-out groups; the final
    model trains again on all groups but 2, under those settings."""
    from shopee_fastai.training import train

    cfg = TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", size=SIZE, head_epochs=4,
                      holdout="^val_", workers=0, models_dir=tmp_path, name="refit", refit=True)
    card = train(cfg)
    first = arcface.card.matching
    assert card.matching["refit"]["valid_groups"] == 2 < first["valid_groups"]
    assert {k: card.matching[k] for k in ("threshold", "min2", "blend", "valid_groups")} == \
        {k: first[k] for k in ("threshold", "min2", "blend", "valid_groups")}
    split = S.read_split(tmp_path / "refit.split.csv")
    table = arcface.prep.table.set_index("posting_id")
    assert table.loc[split.index[split == S.VALID], LABEL].nunique() == 2
    assert table.loc[split.index[split == S.TRAIN], LABEL].nunique() > arcface.prep.rows(S.TRAIN)[LABEL].nunique()
    assert card.wall_time_s["total"] > card.wall_time_s["calibration_run"] > 0
    assert card.matching["calibration_groups"] == sorted(arcface.prep.rows(S.VALID)[LABEL].astype(str).unique())
    assert card.matching["calibration_run"]["test_f1_unseen"] == first["test_f1_unseen"]  # the first model's, named so
    assert card.config["refit"] is True and trained_cnn.card.config["refit"] is False  # a classifier has none
    assert not (tmp_path / "refit.ckpt.pth").exists()


def test_a_refit_interrupted_after_calibrating_resumes_from_the_finished_calibration_run(groups, tmp_path):
    """An interruption during the final run leaves the calibration run's checkpoint: --resume skips its epochs."""
    from shopee_fastai.config import VALID_GROUPS
    from shopee_fastai.training import train
    from shopee_fastai.training.train import _fit

    cfg = TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", size=SIZE, head_epochs=2,
                      holdout="^val_", workers=0, models_dir=tmp_path, name="r", checkpoint_every=1, refit=True)
    first = _fit(cfg, VALID_GROUPS).card  # the calibration run, as far as an interrupted refit gets
    assert (tmp_path / "r.ckpt.pth").is_file() and not (tmp_path / "r.pkl").exists()
    card = train(replace(cfg, resume=True))
    assert card.matching["threshold"] == first.matching["threshold"] and card.matching["refit"]["valid_groups"] == 2
    assert card.wall_time_s["calibration_run"] < first.wall_time_s["total"]  # its epochs were not trained again
    assert (tmp_path / "r.pkl").is_file() and not (tmp_path / "r.ckpt.pth").exists()


def test_every_export_embeds_alike(arcface, tmp_path):
    from typer.testing import CliRunner

    from shopee_fastai.cli import app

    onnx = tmp_path / "arc.onnx"
    assert CliRunner().invoke(app, ["export-onnx", "--model", str(arcface.files.pkl), "--out", str(onnx)]).exit_code == 0
    paths = list(arcface.prep.table[PATH][:10])
    ref = embed_images(paths, arcface.files.pkl)
    assert ref.shape == (10, 512) and np.allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-4)
    for other in (arcface.files.safetensors, onnx):
        assert np.allclose(embed_images(paths, other), ref, atol=1e-4)
    # fastai's own predict returns the embedding, not a vocabulary lookup of its values
    vector, decoded, activation = load_learner(arcface.files.pkl).predict(paths[0])
    assert vector.shape == (512,) and np.allclose(vector.numpy(), ref[0], atol=1e-4)


def test_match_uses_the_models_calibrated_settings(arcface, groups, tmp_path):
    from typer.testing import CliRunner

    from shopee_fastai.cli import app

    stored = M.MatchSettings.of(arcface.card.matching)
    run = lambda *a: CliRunner().invoke(app, ["match", "--data", str(groups), "--model", str(arcface.files.pkl),  # noqa: E731
                                             "--out", str(tmp_path / "s.csv"), *a])
    out = run().output
    assert f"matching at {stored.line()} (calibrated, from arc.pkl's card)" in out
    out = run("--threshold", "0.91").output
    assert "threshold 0.910" in out and "(given; the rest calibrated" in out


def test_embedding_models_refuse_what_they_cannot_do(arcface, groups, trained_cnn, tmp_path):
    from typer.testing import CliRunner

    from shopee_fastai.cli import app

    photo = str(arcface.prep.table[PATH][0])
    r = CliRunner().invoke(app, ["predict", photo, "--model", str(arcface.files.pkl)])
    assert r.exit_code == 2 and "an embedding model" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--model", str(arcface.files.pkl)])
    assert r.exit_code == 2 and "an embedding model has no classes to score" in r.output
    r = CliRunner().invoke(app, ["embed", "--data", str(groups), "--model", str(trained_cnn.files.safetensors),
                                 "--out", str(tmp_path / "e.npy")])
    assert r.exit_code == 2 and "a classifier; its body embeds from the .pkl" in r.output
    np.save(tmp_path / "short.npy", np.zeros((3, 8), np.float32))
    r = CliRunner().invoke(app, ["match", "--data", str(groups), "--embeddings", str(tmp_path / "short.npy")])
    assert r.exit_code == 2 and "embeddings have 3 rows but the table 160" in r.output


@pytest.mark.parametrize("options, message", [
    (dict(arch="cnn"), "--loss arcface: trains an embedding on cached body outputs"),
    (dict(arch=OFFLINE_ARCH, pretrained=True, recipe="fine-tune"), "--recipe features"),
    (dict(arch=OFFLINE_ARCH, pretrained=True, mixup=0.4), "--mixup with --loss arcface"),
    (dict(arch=OFFLINE_ARCH, pretrained=True, margin=120), "--margin 120"),
    (dict(arch=OFFLINE_ARCH, pretrained=True, margin_ramp=1.5), "--margin-ramp 1.5: a share of training, 0 to 1"),
    (dict(arch=OFFLINE_ARCH, pretrained=True, loss="cosface"), "--loss 'cosface': choose one of softmax, gce, arcface, subcenter"),
])
def test_bad_embedding_options_are_one_line(groups, options, message):
    with pytest.raises(ShopeeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(data=groups, **{"loss": "arcface", **options})


def test_embedding_options_on_a_classifier_are_one_line(groups):
    with pytest.raises(ShopeeError, match="--margin shapes an embedding; add --loss arcface"):
        TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, margin=20)


def test_every_loss_has_one_objective_and_every_embedding_loss_a_margin_loss():
    from shopee_fastai.config import Loss
    from shopee_fastai.training.objective import MARGIN_LOSSES, OBJECTIVES

    assert set(OBJECTIVES) == set(Loss) and set(MARGIN_LOSSES) == {loss for loss in Loss if loss.is_embedding}


def test_the_margin_ramp_grows_the_margin_to_its_full_angle(groups):
    import torch
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    from shopee_fastai.training.learner import resolve
    from shopee_fastai.training.objective import MarginRamp, objective

    cfg = resolve(TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", embed_dim=8, margin_ramp=0.5))
    goal = objective(cfg, 4)
    seen = []

    class Watch(Callback):
        order = MarginRamp.order + 1

        def before_batch(self):
            if self.training:
                seen.append(goal.loss_func.loss.margin)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.arange(64) % 4
    dls = DataLoaders.from_dsets(list(zip(x, y)), list(zip(x, y)), bs=16, device="cpu")
    Learner(dls, torch.nn.Linear(8, 8), loss_func=goal.loss_func, cbs=[*goal.callbacks, Watch()]).fit(2, 1e-3)
    full = np.radians(cfg.margin)
    assert len(seen) == 8 and seen[0] == 0 and np.all(np.diff(seen) >= 0)
    assert seen[3] < full and np.isclose(seen[4], full) and np.isclose(goal.loss_func.loss.margin, full)


def test_match_on_an_empty_csv_is_one_line(groups, tmp_path):
    from typer.testing import CliRunner

    from shopee_fastai.cli import app

    (tmp_path / "train_images").mkdir()
    (tmp_path / "train.csv").write_text("posting_id,image,image_phash,title,label_group\n")
    np.save(tmp_path / "e.npy", np.zeros((0, 8), np.float32))
    r = CliRunner().invoke(app, ["match", "--data", str(tmp_path), "--embeddings", str(tmp_path / "e.npy")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "train.csv" in r.output or "no rows" in r.output


def test_one_held_out_group_keeps_the_default_settings(synthetic, tmp_path):
    """Three groups leave one to validate on: it cannot calibrate (matching everything would win), so the
    card keeps the defaults and says so, and `match` does not take them for calibrated ones."""
    from shopee_fastai.config import MATCH_THRESHOLD
    from shopee_fastai.training import train

    card = train(TrainConfig(data=synthetic, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", size=SIZE,
                             head_epochs=1, workers=0, models_dir=tmp_path, name="few"))
    assert card.matching["valid_groups"] == 1 and card.matching["calibrated"] is False
    assert card.matching["threshold"] == MATCH_THRESHOLD
    assert M.settings_for(tmp_path / "few.pkl")[1] == "defaults"
    import pandas as pd

    from ..conftest import make_groups

    table = pd.read_csv(make_groups(tmp_path / "six", n_groups=6) / "train.csv")
    assert table[S.group_split(table, 0, 0.2).eq(S.VALID).to_numpy()]["label_group"].nunique() == 2


def test_too_few_groups_for_an_embedding(tmp_path):
    from ..conftest import make_groups

    with pytest.raises(ShopeeError, match="at least 3"):
        S.group_split(__import__("pandas").read_csv(make_groups(tmp_path, n_groups=2) / "train.csv"), 0, 0.2)


def test_interrupted_embedding_training_resumes_with_its_class_centres(groups, tmp_path):
    """The margin loss's class centres are part of the checkpoint: after Ctrl-C, a resumed run goes on from them."""
    import torch

    from shopee_fastai.training import train

    models = tmp_path / "m"
    cfg = TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="subcenter", holdout="^val_", head_epochs=12,
                      size=SIZE, workers=0, models_dir=models, name="r", checkpoint_every=1, refit=False)
    saved = interrupt_after_three_epochs(cfg)
    state = torch.load(models / "r.ckpt.pth", weights_only=False)
    assert state["loss"]["loss.W"].shape[0] == 512  # the class centres travel with the weights
    train(replace(cfg, resume=True))
    card = json.loads((models / "r.json").read_text())
    resumed = card["history"][saved["epochs_done"]]
    assert [h["epoch"] for h in card["history"]] == list(range(12))
    # it goes on from the saved centres: fresh ones would put the loss back above its first epoch's
    assert resumed["train_loss"] < min(saved["history"][0]["train_loss"], 1.05 * saved["history"][-1]["train_loss"])
    assert card["matching"]["valid_f1"] > 0.5
