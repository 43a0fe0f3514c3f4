import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from shopee_fastai.config import CACHE_ENV, OFFLINE_ARCH, TrainConfig
from shopee_fastai.errors import ShopeeError
from shopee_fastai.nets import weights as W
from shopee_fastai.training import fit_learner
from shopee_fastai.training.learner import setup

from ..conftest import SIZE


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", list(W.OFFLINE))
def test_offline_package_converts_and_loads_strictly_into_timm(cache, arch):
    file = W.offline_weights_file(arch)
    assert file.parent == cache and file.is_file()
    state = load_file(str(file))
    model = timm.create_model(arch)
    assert [len(s) for s in model.blocks] == list(W.OFFLINE[arch].stage_repeats)
    model.load_state_dict(state, strict=True)
    assert not any(torch.equal(v, model.state_dict()[k]) for k, v in timm.create_model(arch).state_dict().items()
                   if v.dtype.is_floating_point and v.numel() > 100)  # really loaded, not random init
    assert W.offline_weights_file(arch) == file  # second call reuses the cache


@pytest.mark.parametrize("arch", [OFFLINE_ARCH, "tf_efficientnet_lite2"])
def test_offline_weights_recognise_real_bananas(cache, arch):
    # The bundled sample's banana photos (group 6): real ImageNet weights call most of them "banana" (class 954).
    from timm.data import create_transform, resolve_data_config

    from shopee_fastai.data.images import load_rgb
    from shopee_fastai.data.table import SAMPLE_DIR, read_table

    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(W.offline_weights_file(arch))}).eval()
    tfm = create_transform(**resolve_data_config({}, model=model))
    bananas = read_table(SAMPLE_DIR).query("label_group == '6'")
    x = torch.stack([tfm(load_rgb(p)) for p in bananas["path"]])
    with torch.no_grad():
        top1 = model(x).argmax(1)
    assert (top1 == 954).float().mean() > 0.5


def test_rename_maps_block_keys_by_stage():
    out = W.lukemelas_to_timm({"_blocks.0._depthwise_conv.weight": 0, "_blocks.1._expand_conv.weight": 1,
                               "_blocks.3._project_conv.weight": 2, "_bn1.bias": 3, "_fc.weight": 4})
    assert out == {"blocks.0.0.conv_dw.weight": 0, "blocks.1.0.conv_pw.weight": 1, "blocks.2.0.conv_pwl.weight": 2,
                   "bn2.bias": 3, "classifier.weight": 4}


def test_local_weights_file_fills_every_body_tensor(synthetic, tmp_path):
    weights = tmp_path / "w.safetensors"
    source = {k: v + 0.25 if v.dtype.is_floating_point else v  # distinct from any fresh init
              for k, v in timm.create_model("test_efficientnet").state_dict().items()}
    save_file(source, str(weights))
    *_, learn = setup(TrainConfig(data=synthetic, split="random", arch="test_efficientnet", weights=weights, size=SIZE, workers=0,
                                    models_dir=tmp_path))
    body = {k.removeprefix("model."): v for k, v in learn.model[0].state_dict().items()}
    shared = [k for k in source if not k.startswith("classifier")]
    assert shared and all(torch.equal(body[k], source[k]) for k in shared)


def test_pretrained_without_reachable_weights_names_both_fixes(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TrainConfig(data=synthetic, split="random", arch="test_efficientnet", pretrained=True, size=SIZE, workers=0, models_dir=tmp_path)
    with pytest.raises(ShopeeError, match="--weights FILE.*connect to the network") as e:
        fit_learner(cfg)
    assert "\n" not in str(e.value)


def test_arch_without_any_pretrained_source_is_refused():
    with pytest.raises(ShopeeError, match="timm knows no pretrained source"):
        W.resolve_weights("test_mambaout", pretrained=True)


def test_weights_that_do_not_fit_the_arch(synthetic, tmp_path):
    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    cfg = TrainConfig(data=synthetic, split="random", arch="test_efficientnet", weights=weights, size=SIZE, workers=0, models_dir=tmp_path)
    with pytest.raises(ShopeeError, match="does not fit test_efficientnet"):
        setup(cfg)


@pytest.mark.parametrize("name, message", [("missing.pth", "file not found"), ("w.txt", "expected a")])
def test_bad_weights_paths(tmp_path, name, message):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ShopeeError, match=message):
        W.resolve_weights("test_efficientnet", pretrained=True, weights=tmp_path / name)
