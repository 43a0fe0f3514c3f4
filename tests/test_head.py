import timm
import torch
from safetensors.torch import save_file

from shopee_fastai.train import TrainConfig, export, fit_learner

from .conftest import COLOURS, SIZE


def test_head_on_cached_features_leaves_the_body_untouched_and_learns(synthetic, tmp_path):
    weights = tmp_path / "w.safetensors"
    source = timm.create_model("test_resnet").state_dict()
    save_file(source, str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, recipe="features",
                      head_epochs=80, lr=1e-2, epochs=0, size=SIZE, workers=0, models_dir=tmp_path, name="feat")
    trained = fit_learner(cfg)
    history = trained.card["history"]
    assert [h["phase"] for h in history] == ["head"] * 80
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    body = {k.removeprefix("model."): v for k, v in trained.learn.model[0].state_dict().items()}
    assert all(torch.equal(body[k], v) for k, v in source.items() if k in body)  # BatchNorm statistics included
    assert trained.card["test_accuracy"] > 1 / len(COLOURS)
    export(trained)
    assert (tmp_path / "feat.pkl").is_file()


def test_features_recipe_then_unfrozen_epochs(synthetic, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, recipe="features",
                      head_epochs=3, epochs=1, size=SIZE, bs=8, workers=0, models_dir=tmp_path)
    phases = [h["phase"] for h in fit_learner(cfg).card["history"]]
    assert phases == ["head"] * 3 + ["unfrozen"]
