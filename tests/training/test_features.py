import pytest
import timm
import torch
from safetensors.torch import save_file

from shopee_fastai.config import TOP_STAGES, TrainConfig
from shopee_fastai.errors import ShopeeError
from shopee_fastai.nets.body import split_model
from shopee_fastai.training import export, fit_learner
from shopee_fastai.training.features import augmented_outputs, frozen_outputs
from shopee_fastai.training.learner import setup

from ..conftest import COLOURS, SIZE


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_head_on_cached_features_leaves_the_body_untouched_and_learns(synthetic, tmp_path, mixup):
    weights = tmp_path / "w.safetensors"
    source = timm.create_model("test_resnet").state_dict()
    save_file(source, str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, recipe="features",
                      head_epochs=80, lr=1e-2, epochs=0, size=SIZE, workers=0, models_dir=tmp_path, name="feat",
                      mixup=mixup)
    trained = fit_learner(cfg)
    history = trained.card.history
    assert [h["phase"] for h in history] == ["head"] * 80
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    body = {k.removeprefix("model."): v for k, v in trained.learn.model[0].state_dict().items()}
    assert all(torch.equal(body[k], v) for k, v in source.items() if k in body)  # BatchNorm statistics included
    assert trained.card.test_accuracy > 1 / len(COLOURS)
    export(trained)
    assert (tmp_path / "feat.pkl").is_file()


def test_features_recipe_then_unfrozen_epochs(synthetic, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, recipe="features",
                      head_epochs=3, epochs=1, size=SIZE, bs=8, workers=0, models_dir=tmp_path)
    phases = [h["phase"] for h in fit_learner(cfg).card.history]
    assert phases == ["head"] * 3 + ["unfrozen"]


def test_head_views_are_augmented_passes_over_the_training_images_in_order(synthetic, tmp_path, monkeypatch):
    import shopee_fastai.training.features as H

    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_resnet", weights=weights, size=SIZE, bs=8, workers=0,
                      models_dir=tmp_path)
    *_, learn = setup(cfg)
    frozen = split_model(learn.model, 0).frozen
    x, y = augmented_outputs(learn, frozen, 2, progress=False)
    n = len(learn.dls.train_ds)
    labels = torch.tensor([int(t) for _, t in learn.dls.train_ds])
    assert x.shape[0] == 2 * n and torch.equal(y, labels.repeat(2))
    plain, _ = frozen_outputs(learn, frozen, list(learn.dls.train_ds.items["path"]), progress=False)
    assert not torch.allclose(x[:n], x[n:]) and not torch.allclose(x[:n], plain)  # random, and not the plain view

    passes = []
    real = H.augmented_outputs
    monkeypatch.setattr(H, "augmented_outputs", lambda *a, **k: passes.append(a[2]) or real(*a, **k))  # a spy: the real function runs
    for views, extra in ((4, [2]), (1, [])):
        passes.clear()
        trained = fit_learner(TrainConfig(**{**cfg.__dict__, "head_views": views, "head_epochs": 20, "lr": 1e-2, "epochs": 0}))
        assert passes == extra and trained.card.test_accuracy > 1 / len(COLOURS)


def _lite0():
    from safetensors.torch import load_file

    from shopee_fastai.config import OFFLINE_ARCH
    from shopee_fastai.nets.weights import offline_weights_file

    return OFFLINE_ARCH, load_file(str(offline_weights_file()))  # real ImageNet weights: random ones give no usable features


def test_top_stages_train_with_the_head_and_keep_imagenet_batchnorm(synthetic, tmp_path):
    arch, source = _lite0()
    cfg = TrainConfig(data=synthetic, split="random", arch=arch, pretrained=True, head_epochs=20, lr=1e-2, body_lr=1e-3,
                      size=SIZE, workers=0, models_dir=tmp_path, name="top", ensemble=1)  # top_stages: the default
    trained = fit_learner(cfg)
    body = {k.removeprefix("model."): v for k, v in trained.learn.model[0].state_dict().items()}
    n = len(trained.learn.model[0].model.blocks)
    top = tuple(f"blocks.{i}." for i in range(n - TOP_STAGES, n))
    trainable = [k for k in body if k.startswith((*top, "conv_head.", "bn2."))
                 and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    frozen = [k for k in body if k not in trainable]
    assert trainable and all(torch.equal(body[k], source[k]) for k in frozen)  # lower stages and every BN statistic
    assert all(any(not torch.equal(body[k], source[k]) for k in trainable if k.startswith(t)) for t in top)  # each top stage learnt
    history = trained.card.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert trained.card.test_accuracy > 1 / len(COLOURS)
    export(trained)
    assert (tmp_path / "top.pkl").is_file()


def test_top_stages_zero_is_the_head_alone(synthetic, tmp_path):
    arch, source = _lite0()
    cfg = TrainConfig(data=synthetic, split="random", arch=arch, pretrained=True, head_epochs=2, top_stages=0,
                      size=SIZE, workers=0, models_dir=tmp_path)
    body = {k.removeprefix("model."): v for k, v in fit_learner(cfg).learn.model[0].state_dict().items()}
    assert all(torch.equal(v, source[k]) for k, v in body.items())


@pytest.mark.parametrize("arch, top_stages, message", [("test_resnet", 1, "EfficientNet/MobileNet-style"),
                                                        ("test_efficientnet", 99, "choose 0 to")])
def test_top_stages_the_body_cannot_train_is_one_clear_error(synthetic, tmp_path, arch, top_stages, message):
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model(arch).state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch=arch, weights=weights, head_epochs=1, top_stages=top_stages,
                      size=SIZE, workers=0, models_dir=tmp_path)
    with pytest.raises(ShopeeError, match=message):
        fit_learner(cfg)


def test_the_frozen_part_caches_through_onnx_runtime_and_agrees_with_pytorch():
    from fastai.vision.learner import create_timm_model

    from shopee_fastai.config import OFFLINE_ARCH
    from shopee_fastai.inference.export import onnx_module
    from shopee_fastai.training.features import _cacher

    torch.manual_seed(0)
    split = split_model(create_timm_model(OFFLINE_ARCH, 3, pretrained=False)[0], TOP_STAGES)
    x = torch.randn(5, 3, 64, 64)  # another batch size than the export's example: the batch axis is dynamic
    with torch.no_grad():
        want = split.frozen.eval()(x)
    assert onnx_module(split.frozen, torch.zeros(2, 3, 64, 64)) is not None  # ONNX Runtime runs it here
    got = _cacher(split.frozen, False, 64, torch.device("cpu"))(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
    assert torch.equal(_cacher(split.frozen, True, 64, torch.device("cpu"))(x), got.half())
