import json

import pandas as pd
import pytest

from shopee_fastai import data as D
from shopee_fastai.errors import ShopeeError
from shopee_fastai.evaluate import accuracy_on, evaluate


def test_evaluate_scores_the_saved_test_split(trained_cnn):
    result = evaluate(trained_cnn.paths["pkl"])
    card = json.loads(trained_cnn.paths["card"].read_text())
    assert result["test_accuracy"] == card["test_accuracy"]
    assert result["valid_accuracy"] == card["valid_accuracy"]
    assert result["test_images"] == card["split"]["test"]


def test_accuracy_counts_hits_by_hand(trained_cnn):
    rows = D.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, D.TEST).head(3)
    assert accuracy_on(trained_cnn.learn, rows) == pytest.approx(1.0, abs=0.34)
    wrong = rows.assign(label_group="no-such-group")
    assert accuracy_on(trained_cnn.learn, wrong) == 0.0
    half = pd.concat([rows.head(2), wrong.head(2)])
    assert accuracy_on(trained_cnn.learn, half) == accuracy_on(trained_cnn.learn, rows.head(2)) / 2
    assert accuracy_on(trained_cnn.learn, rows.iloc[:0]) is None


def test_missing_card_is_a_clear_error(trained_cnn, tmp_path):
    lone = tmp_path / "m.pkl"
    lone.write_bytes(trained_cnn.paths["pkl"].read_bytes())
    with pytest.raises(ShopeeError, match="model card not found"):
        evaluate(lone)
