"""On a CUDA GPU (skipped without one): the default recipe trains with mixed precision, and its exports predict
alike on the GPU and on the CPU. `bench/gpu_check.sh` runs these on a lent GPU machine."""

import numpy as np
import pytest
import torch

from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.data import split as S
from shopee_fastai.data.table import PATH
from shopee_fastai.inference.load import load_predictor

from ..conftest import COLOURS, SIZE, fit_and_export

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def on_gpu(synthetic, tmp_path_factory):
    return fit_and_export(TrainConfig(data=synthetic, arch=OFFLINE_ARCH, pretrained=True, split="random", size=SIZE,
                                      head_epochs=4, models_dir=tmp_path_factory.mktemp("m")))


def test_default_recipe_trains_with_mixed_precision_on_the_gpu(on_gpu):
    assert on_gpu.card.precision in ("bf16", "fp16")
    assert on_gpu.card.test_accuracy > 1 / len(COLOURS)


def test_gpu_and_cpu_predict_alike(on_gpu):
    images = list(on_gpu.prep.rows(S.TEST)[PATH])
    gpu = load_predictor(on_gpu.files.pkl, backend="torch")
    assert gpu.backend.device.type == "cuda"
    cpu = load_predictor(on_gpu.files.onnx)
    g, c = (p.outputs(images, progress=False).outputs for p in (gpu, cpu))
    assert (g.argmax(1) == c.argmax(1)).mean() >= 0.9 and np.abs(g - c).max() < 0.05  # bf16/fp16 against fp32
