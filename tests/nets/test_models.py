import pytest
import torch

from shopee_fastai.errors import ShopeeError
from shopee_fastai.nets.body import IMAGENET_STATS, check_arch, input_stats
from shopee_fastai.nets.cnn import HandCNN


def test_hand_cnn_is_the_studys_shape():
    model = HandCNN(n_classes=21, size=64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == len(pools) == 3 and len(linears) == 2
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 21)


def test_input_stats_follow_the_weights():
    assert input_stats("tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert input_stats("efficientnet_b0") == IMAGENET_STATS
    assert input_stats("cnn") == IMAGENET_STATS


def test_unknown_arch():
    with pytest.raises(ShopeeError, match="not a timm model"):
        check_arch("efficientnet_b99")
