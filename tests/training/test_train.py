import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fastai.learner import load_learner
from typer.testing import CliRunner

from shopee_fastai.artifacts import ModelCard
from shopee_fastai.cli import app
from shopee_fastai.config import TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.errors import ShopeeError
from shopee_fastai.evaluation import accuracy_on
from shopee_fastai.inference.torch_backends import predict_probs
from shopee_fastai.training import fit_learner, lr_find, train

from ..conftest import COLOURS, SIZE, make_groups, make_synthetic

CHANCE = 1 / len(COLOURS)


def test_cnn_beats_chance_and_exports_everything(trained_cnn):
    card, files = trained_cnn.card, trained_cnn.files
    assert card.test_accuracy >= 0.8 > CHANCE
    for path in (files.pkl, files.card, files.split, files.curves):
        assert path.is_file()
    saved = json.loads(files.card.read_text())
    assert saved["arch"] == "cnn" and saved["weights"] == "random init"
    assert saved["classes"] == sorted(COLOURS)
    assert [h["phase"] for h in saved["history"]] == ["scratch"] * 4
    assert {"train_loss", "valid_loss", "accuracy"} <= set(saved["history"][0])
    assert all(h["seconds"] > 0 for h in saved["history"])  # each epoch's wall time, to compare machines
    assert saved["split"]["train"] + saved["split"]["valid"] + saved["split"]["test"] == 3 * 12
    assert set(saved["versions"]) >= {"fastai", "timm", "torch"}


def test_export_reloads_in_a_fresh_process_with_same_probabilities(trained_cnn):
    images = [p for p in S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST)[D.PATH]]
    before = predict_probs(trained_cnn.learn, images, progress=False).outputs
    code = ("import json,sys; from shopee_fastai.inference.load import load_learner; "
            "from shopee_fastai.inference.torch_backends import predict_probs; "
            "l=load_learner(sys.argv[1]); print(json.dumps(predict_probs(l, sys.argv[2:], progress=False).outputs.tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(trained_cnn.files.pkl), *images],
                         capture_output=True, text=True, check=True).stdout
    after = np.array(json.loads(out.strip().splitlines()[-1]), dtype=np.float32)
    assert before.shape == after.shape and np.allclose(before, after, atol=1e-5)


def test_small_timm_model_from_scratch_beats_chance(tmp_path):
    # 30 photos a group: the shared set's test split (one photo a group) fails on one miss, as other arithmetic gives
    data = make_synthetic(tmp_path / "data", per_group=30)
    cfg = TrainConfig(data=data, split="random", arch="test_resnet", size=SIZE, bs=8, epochs=10, aug="none",
                      workers=0, models_dir=tmp_path, lr=3e-3)
    trained = fit_learner(cfg)
    assert trained.card.weights == "random init"
    assert trained.card.test_accuracy >= 0.8 > CHANCE


def test_pretrained_recipe_runs_frozen_then_unfrozen_phases(synthetic, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, size=SIZE, bs=8, epochs=2,
                      freeze_epochs=1, aug="none", workers=0, models_dir=tmp_path, recipe="fine-tune")
    trained = fit_learner(cfg)
    assert trained.card.weights.startswith("file:")
    assert [h["phase"] for h in trained.card.history] == ["frozen", "unfrozen", "unfrozen"]
    assert set(trained.card.wall_time_s) == {"total", "frozen", "unfrozen"}
    assert all(p.requires_grad for p in trained.learn.model.parameters())  # unfrozen at the end


def test_study_augmentation_and_sgd_train(synthetic, tmp_path):
    cfg = TrainConfig(data=synthetic, split="random", arch="cnn", size=SIZE, bs=8, epochs=1, aug="study", opt="sgd",
                      workers=0, models_dir=tmp_path)
    card = train(cfg)
    assert card.config["aug"] == "study" and (tmp_path / "cnn-scratch.pkl").is_file()


def test_same_seed_same_initial_model(synthetic, tmp_path):
    from shopee_fastai.training.learner import setup

    cfg = TrainConfig(data=synthetic, split="random", arch="cnn", size=SIZE, workers=0, models_dir=tmp_path)
    a, b = (setup(cfg)[-1].model.state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_find_prints_suggestions_and_writes_png(synthetic, tmp_path):
    plot = tmp_path / "lr.png"
    found = lr_find(TrainConfig(data=synthetic, split="random", arch="cnn", size=SIZE, bs=8, workers=0, models_dir=tmp_path), plot)
    assert set(found) == {"valley", "slide", "minimum", "steep"}
    assert all(1e-8 < v < 10 for v in found.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("change, message", [
    (dict(arch="no_such_net"), "not a timm model"),
    (dict(opt="lamb"), "--opt"),
    (dict(aug="heavy"), "--aug"),
    (dict(arch="cnn", pretrained=True), "no pretrained weights"),
    (dict(size=4), "--size"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
    (dict(mixup=-1.0), "--mixup"),
])
def test_bad_options_fail_before_any_work(synthetic, tmp_path, change, message):
    # TrainConfig checks its own values when made; what needs the environment (the arch exists) fails in train.
    with pytest.raises(ShopeeError, match=message):
        train(TrainConfig(data=synthetic, split="random", models_dir=tmp_path, **change))
    assert not list(tmp_path.iterdir())


def test_leak_free_split_that_leaves_no_test_images_says_how_to_fix(synthetic, tmp_path):
    # Noisy colour blobs are near-duplicates of each other to an ImageNet backbone: one cluster per group.
    cfg = TrainConfig(data=synthetic, arch="cnn", size=SIZE, workers=0, models_dir=tmp_path)
    with pytest.raises(ShopeeError, match="leak-free split left no .* images.*--split random"):
        train(cfg)


def test_epochs_default_by_recipe(synthetic):
    from shopee_fastai.training.learner import resolve

    assert resolve(TrainConfig(data=synthetic, arch="cnn")).epochs == 5
    assert resolve(TrainConfig(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True)).epochs == 0  # features: head only
    assert resolve(TrainConfig(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True, recipe="fine-tune")).epochs == 5
    assert resolve(TrainConfig(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True, epochs=2)).epochs == 2


def test_loss_defaults_to_gce_where_it_was_measured(synthetic):
    """The features recipe on a pretrained body trains with gce at q 0.4 (docs/results.md, label noise); the
    fine-tune and from-scratch recipes, never measured with it, keep softmax; a loss given is kept."""
    pretrained = dict(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True)
    assert (TrainConfig(**pretrained).loss, TrainConfig(**pretrained).gce_q) == ("gce", 0.4)
    assert TrainConfig(**pretrained, recipe="fine-tune").loss == "softmax"
    assert TrainConfig(data=synthetic, arch="cnn").loss == "softmax"
    assert TrainConfig(**pretrained, loss="softmax", label_smoothing=0.0).loss == "softmax"
    with pytest.raises(ShopeeError, match="add --loss softmax"):
        TrainConfig(**pretrained, label_smoothing=0.0)
    from shopee_fastai.training.learner import resolve

    # the card records the smoothing a run used: none for gce
    assert resolve(TrainConfig(**pretrained)).label_smoothing == 0.0
    assert resolve(TrainConfig(**pretrained, loss="softmax")).label_smoothing == 0.1


def test_settings_resolve_once_for_the_body_at_hand(synthetic):
    """Every default a run leaves open is worked out in one frozen copy; what the user gave stays as given."""
    import dataclasses

    from shopee_fastai.config import (DEFAULT_ENSEMBLE, EMBED_HEAD_EPOCHS, EMBED_TOP_STAGES, ENSEMBLE_HEAD_EPOCHS, HEAD_EPOCHS,
                                      HEAD_VIEWS, HEAD_WD, LR, TOP_GROUPS, TOP_STAGES, WD, Optimizer)
    from shopee_fastai.training.learner import resolve

    lite = dict(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True)
    run = resolve(TrainConfig(**lite))
    assert (run.top_stages, run.ensemble, run.head_epochs, run.head_views) == (TOP_STAGES, DEFAULT_ENSEMBLE, ENSEMBLE_HEAD_EPOCHS,
                                                                              HEAD_VIEWS[True])
    assert (run.top_groups, run.lr, run.wd, run.head_wd) == (TOP_GROUPS, LR[Optimizer.adam], WD[Optimizer.adam], HEAD_WD)
    assert run.name == "tf_efficientnet_lite0-pretrained"  # the default's members keep the default name
    assert run.member_folds  # each member validates on a fold of its own
    one = resolve(TrainConfig(**lite, ensemble=1))
    assert (one.ensemble, one.head_epochs, one.name, one.member_folds) == (1, HEAD_EPOCHS[True], "tf_efficientnet_lite0-pretrained", False)
    assert not resolve(TrainConfig(**lite, member_folds=False)).member_folds
    assert not resolve(TrainConfig(**lite, split="random")).member_folds  # folds measured no help on a random split
    assert resolve(TrainConfig(**lite, split="random", member_folds=True)).member_folds
    assert not resolve(TrainConfig(**lite, loss="arcface", ensemble=2)).member_folds  # an embedding validates on held-out groups
    assert resolve(TrainConfig(**lite, ensemble=2)).name == "tf_efficientnet_lite0-ensemble2"
    # one model where members could not share a cache of trained stages, and for an embedding (its own study)
    for single in (dict(top_stages=0), dict(loss="arcface"), dict(recipe="fine-tune"), dict(epochs=1)):
        assert resolve(TrainConfig(**lite, **single)).ensemble == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.lr = 1.0
    assert resolve(TrainConfig(**lite, top_stages=0)).head_epochs == HEAD_EPOCHS[False]
    assert resolve(TrainConfig(**lite, loss="arcface")).top_groups == 0  # an embedding trains on every group
    assert resolve(TrainConfig(**lite, loss="arcface")).top_stages == EMBED_TOP_STAGES
    assert resolve(TrainConfig(**lite, loss="arcface", top_stages=0)).head_epochs == EMBED_HEAD_EPOCHS[False]
    assert resolve(TrainConfig(**lite, head_epochs=7, wd=0.1)).head_epochs == 7
    assert resolve(TrainConfig(**lite, wd=0.1)).head_wd == 0.1
    no_stages = resolve(TrainConfig(data=synthetic, arch="test_resnet", pretrained=True))
    assert (no_stages.top_stages, no_stages.ensemble) == (0, 1)  # no stages to train
    sgd = resolve(TrainConfig(data=synthetic, arch="cnn", opt="sgd"))
    assert (sgd.lr, sgd.wd, sgd.head_epochs, sgd.top_stages, sgd.ensemble) == (LR[Optimizer.sgd], WD[Optimizer.sgd], 0, 0, 1)  # no head phase


def test_a_resolved_config_leaves_nothing_open_and_is_no_train_config(synthetic):
    """Only `weights`, `holdout` and `workers` may be None once resolved, in its values and its types; the card
    records TrainConfig's keys plus `head_wd`; and an unresolved config cannot pass for a resolved one."""
    import dataclasses

    from shopee_fastai.config import ResolvedConfig
    from shopee_fastai.training.learner import resolve

    optional = {"weights", "holdout", "workers"}
    lite = dict(data=synthetic, arch="tf_efficientnet_lite0", pretrained=True)
    for cfg in (TrainConfig(data=synthetic, arch="cnn"), TrainConfig(**lite), TrainConfig(**lite, loss="arcface"),
                TrainConfig(**lite, ensemble=2), TrainConfig(**lite, recipe="fine-tune")):
        run = resolve(cfg)
        assert [f.name for f in dataclasses.fields(run) if getattr(run, f.name) is None and f.name not in optional] == []
        assert list(dataclasses.asdict(run)) == [f.name for f in dataclasses.fields(TrainConfig)] + ["head_wd"]
        assert run.model_name == run.name == cfg.model_name and run.cached_head == cfg.cached_head
    assert {f.name for f in dataclasses.fields(ResolvedConfig) if "None" in str(f.type)} == optional
    assert not issubclass(ResolvedConfig, TrainConfig) and not isinstance(TrainConfig(**lite), ResolvedConfig)
    with pytest.raises(TypeError):
        ResolvedConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})  # no head_wd: not resolved


def test_groups_too_small_to_split_say_so(tmp_path):
    from ..conftest import make_synthetic

    data = make_synthetic(tmp_path / "pairs", per_group=2)
    cfg = TrainConfig(data=data, arch="cnn", split="random", size=SIZE, workers=0, models_dir=tmp_path / "m")
    with pytest.raises(ShopeeError, match="left no valid images .*fewer than 3 photos"):
        train(cfg)
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").iterdir())


def test_unwritable_models_dir_fails_before_training(synthetic, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    with pytest.raises(ShopeeError, match="--models-dir .* cannot create it"):
        train(TrainConfig(data=synthetic, arch="cnn", split="random", models_dir=blocker / "sub"))


def test_export_onnx_refuses_int8_without_photos_and_photos_without_int8(tmp_path):
    from shopee_fastai.training.train import export_onnx

    with pytest.raises(ShopeeError, match="--int8 calibrates on training photos"):
        export_onnx(tmp_path / "m.pkl", int8=True)
    with pytest.raises(ShopeeError, match="--data is read only with --int8"):
        export_onnx(tmp_path / "m.pkl", data=tmp_path)


def test_train_scores_the_held_out_photos_alone_and_counts_their_twins(tmp_path):
    """With --holdout the test is the held-out photos and nothing else; a training photo with a held-out photo's
    phash is left out of training, and `train` says how many."""
    data = make_groups(tmp_path / "groups", n_groups=6, per_group=8, other=3)
    table = pd.read_csv(data / "train.csv", dtype=str)
    held = table["posting_id"].str.startswith("val_")
    twin = table.index[~held][0]
    table.loc[twin, "image_phash"] = table.loc[held.idxmax(), "image_phash"]  # one training photo: a held-out one's twin
    table.to_csv(data / "train.csv", index=False)
    out = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "cnn", "--size", str(SIZE), "--epochs", "2",
                                   "--split", "random", "--holdout", "^val_", "--top-groups", "0", "--aug", "none",
                                   "--workers", "0", "--models-dir", str(tmp_path / "m"), "--name", "h"])
    assert out.exit_code == 0, out.output
    assert "left out of training: 1 direct twin(s) of --holdout photos" in out.output
    card = ModelCard.read(tmp_path / "m" / "h.pkl")
    assert card.split["test"] == held.sum() == 18 and card.split["twin"] == 1
    assert card.split["train"] + card.split["valid"] == len(table) - 18 - 1
    split = S.read_split(tmp_path / "m" / "h.split.csv")
    assert set(split.index[split == S.TEST]) == set(table.loc[held, "posting_id"])
    assert split[table.loc[twin, "posting_id"]] == S.TWIN
    learn = load_learner(tmp_path / "m" / "h.pkl")
    rows = D.read_table(data)[held.to_numpy()].reset_index(drop=True)
    assert card.test_accuracy == accuracy_on(learn, rows)
    assert f"({held.sum()} test images" in out.output


def test_gce_is_bounded_nears_cross_entropy_as_q_falls_and_reduces_as_fastai_asks():
    """What makes it robust (a confidently wrong label costs at most 1/q) and what fastai's MixUp needs of it."""
    from shopee_fastai.training.objective import GeneralisedCrossEntropy

    logits, y = torch.tensor([[9.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([1, 1])
    per_photo = GeneralisedCrossEntropy(0.4, reduction="none")(logits, y)
    assert per_photo.shape == (2,) and per_photo[0] < 1 / 0.4 and per_photo[0] > per_photo[1]
    assert torch.isclose(GeneralisedCrossEntropy(0.4)(logits, y), per_photo.mean())
    assert torch.isclose(GeneralisedCrossEntropy(1e-4)(logits, y), F.cross_entropy(logits, y), rtol=1e-3)


@pytest.mark.parametrize("q", [0.7, 0.4])
def test_a_noise_robust_loss_beats_chance_with_moved_labels(synthetic, tmp_path, q):
    """`--loss gce` (at its default q and a higher one) on a fifth of the training photos filed under another group
    still learns the colours: scored on held-out photos whose labels were left alone."""
    import shutil

    import pandas as pd

    data = tmp_path / "noisy"
    shutil.copytree(synthetic, data)
    table = pd.read_csv(data / "train.csv", dtype=str)
    held = table["posting_id"].str.endswith(("_0", "_1"))  # 2 clean test photos per group
    rng = np.random.default_rng(0)
    moved = rng.choice(np.flatnonzero(~held.to_numpy()), size=int(0.2 * (~held).sum()), replace=False)
    groups = sorted(table["label_group"].unique())
    table.loc[moved, "label_group"] = [groups[(groups.index(g) + 1) % len(groups)] for g in table.loc[moved, "label_group"]]
    table.loc[held, "posting_id"] = "val_" + table.loc[held, "posting_id"]
    table.to_csv(data / "train.csv", index=False)
    cfg = TrainConfig(data=data, split="random", arch="cnn", size=SIZE, bs=8, epochs=6, aug="none", workers=0,
                      models_dir=tmp_path / "m", lr=3e-3, loss="gce", gce_q=q, holdout="^val_")
    trained = fit_learner(cfg)
    assert type(trained.learn.loss_func).__name__ == "GeneralisedCrossEntropy" and trained.learn.loss_func.q == q
    assert trained.card.config["gce_q"] == q
    assert trained.card.test_accuracy >= 0.8 > CHANCE
