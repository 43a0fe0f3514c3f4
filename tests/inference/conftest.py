"""Fixtures the inference tests share."""

import pytest

from shopee_fastai.data import split as S
from shopee_fastai.data import table as D


@pytest.fixture(scope="session")
def photos(trained_cnn):
    """The tiny model's test photos: ones it never trained on."""
    return list(S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST)[D.PATH])
