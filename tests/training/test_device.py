import pickle

import numpy as np
import pytest
import torch

from shopee_fastai.config import TrainConfig
from shopee_fastai.device import cpu_has_bf16, resolve_precision
from shopee_fastai.errors import ShopeeError
from shopee_fastai.inference.load import load_learner
from shopee_fastai.inference.torch_backends import predict_probs
from shopee_fastai.training import export, fit_learner
from shopee_fastai.training.callbacks import SPEED_CALLBACKS, CPUAutocast

from ..conftest import SIZE


def test_auto_precision_is_fp32_on_cpu_and_mixed_on_cuda():
    assert resolve_precision("auto", cuda=False) == "fp32"
    assert resolve_precision("auto", cuda=True) in ("bf16", "fp16")
    with pytest.raises(ShopeeError, match="needs a CUDA GPU"):
        resolve_precision("fp16", cuda=False)
    with pytest.raises(ShopeeError, match="choose one of"):
        resolve_precision("fp8", cuda=False)
    with pytest.raises(ShopeeError, match="int8 runs the model's quantised ONNX graph"):
        resolve_precision("int8", cuda=False)  # inference's ONNX path only, never a torch precision


def test_bad_precision_fails_before_any_work(synthetic, tmp_path):
    with pytest.raises(ShopeeError, match="--precision"):
        TrainConfig(data=synthetic, precision="fp8", models_dir=tmp_path)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_training_on_cpu_learns_and_exports_a_plain_fp32_learner(synthetic, tmp_path):
    cfg = TrainConfig(data=synthetic, arch="cnn", size=SIZE, bs=8, epochs=4, aug="none", workers=0, split="random",
                      precision="bf16", models_dir=tmp_path)
    trained = fit_learner(cfg)
    assert trained.card.precision == "bf16"
    assert any(isinstance(cb, CPUAutocast) for cb in trained.learn.cbs)
    assert trained.card.test_accuracy > 0.6  # 3 separable groups: chance is 0.33
    export(trained)
    learn = load_learner(trained.files.pkl)
    assert not any(isinstance(cb, SPEED_CALLBACKS) for cb in learn.cbs)
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    images = [str(p) for p in sorted((synthetic / "train_images").glob("*.jpg"))[:4]]
    assert np.allclose(predict_probs(learn, images, progress=False).outputs,
                       predict_probs(trained.learn, images, progress=False).outputs, atol=1e-5)


def test_training_runs_channels_last_and_exports_contiguous(trained_cnn):
    learn = load_learner(trained_cnn.files.pkl)
    assert trained_cnn.card.precision == "fp32"
    assert all(p.is_contiguous() for p in learn.model.parameters())
    pickle.dumps(learn.model)  # nothing unpicklable was left behind
