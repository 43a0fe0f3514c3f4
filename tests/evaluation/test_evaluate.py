import json
import shutil

import numpy as np
import pytest

from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.errors import ShopeeError
from shopee_fastai.evaluation import accuracy_on, classification_metrics, evaluate, most_confused


def test_metrics_against_a_hand_checked_case():
    # 3 classes, 5 images: targets a a b c c; predictions a b b c a; second choices listed below.
    probs = np.array([[.7, .2, .1], [.3, .6, .1], [.1, .8, .1], [.2, .1, .7], [.5, .1, .4]])
    targets = np.array([0, 0, 1, 2, 2])
    m = classification_metrics(probs, targets, ["a", "b", "c"])
    assert m["top1"] == 0.6
    assert m["top5"] == 1.0  # k is capped at the 3 classes
    pc = m["per_class"].set_index("label_group")
    # a: predicted twice (1 right) -> P 1/2, R 1/2; b: predicted twice (1 right) -> P 1/2, R 1; c: P 1, R 1/2
    assert pc.loc["a", ["precision", "recall"]].tolist() == [0.5, 0.5]
    assert pc.loc["b", ["precision", "recall", "f1"]].tolist() == [0.5, 1.0, 0.6667]
    assert pc.loc["c", ["precision", "recall", "f1"]].tolist() == [1.0, 0.5, 0.6667]
    assert m["macro_f1"] == pytest.approx((0.5 + 0.6667 + 0.6667) / 3, abs=1e-4)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert most_confused(m["confusion"], ["a", "b", "c"]) == [("a", "b", 1), ("c", "a", 1)]


def test_unreadable_and_unknown_rows_count_as_wrong():
    probs = np.array([[0.9, 0.1], [0.0, 0.0], [0.2, 0.8]])
    m = classification_metrics(probs, np.array([0, 0, -1]), ["a", "b"])
    assert m["top1"] == pytest.approx(1 / 3, abs=1e-4) and m["unknown_labels"] == 1
    assert m["confusion"].sum() == 1


def test_evaluate_scores_the_saved_test_split_and_writes_a_report(trained_cnn, tmp_path):
    result = evaluate(trained_cnn.files.pkl, out=tmp_path / "r", progress=False)
    card = json.loads(trained_cnn.files.card.read_text())
    assert result["test_accuracy"] == card["test_accuracy"]
    assert result["valid_accuracy"] == card["valid_accuracy"]
    assert result["images"] == card["split"]["test"]
    for name in ("confusion.png", "top_losses.png"):
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["top1"] == result["top1"] and "most_confused" in saved
    assert (tmp_path / "r" / "per_class.csv").read_text().startswith("label_group,precision,recall,f1,support,title")
    assert saved["titles"] == {c: f"product {c}" for c in ("1001", "2002", "3003")}
    import pandas as pd

    preds = pd.read_csv(tmp_path / "r" / "predictions.csv", dtype=str)
    assert (preds["predicted_title"] == "product " + preds["predicted"]).all()


def test_evaluate_any_folder_with_or_without_labels(trained_cnn, synthetic, tmp_path):
    labelled = evaluate(trained_cnn.files.pkl, data=synthetic, out=tmp_path / "a", progress=False)
    assert labelled["images"] == 36 and labelled["top1"] > 0.5
    unlabelled = tmp_path / "u"
    (unlabelled).mkdir()
    (unlabelled / "train_images").symlink_to(synthetic / "train_images")
    (unlabelled / "train.csv").write_text("posting_id,image\nx,1001_000.jpg\ny,2002_000.jpg\n")
    result = evaluate(trained_cnn.files.pkl, data=unlabelled, out=tmp_path / "b", progress=False)
    assert "top1" not in result and result["images"] == 2
    assert (tmp_path / "b" / "predictions.csv").read_text().count("\n") == 3


def test_tta_gives_probabilities_of_the_same_shape(trained_cnn):
    from shopee_fastai.inference.torch_backends import predict_probs

    images = list(S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST)[D.PATH])
    plain = predict_probs(trained_cnn.learn, images, progress=False).outputs
    tta = predict_probs(trained_cnn.learn, images, progress=False, tta=True).outputs
    assert tta.shape == plain.shape and np.allclose(tta.sum(1), 1, atol=1e-4)
    assert (tta.argmax(1) == plain.argmax(1)).mean() >= 0.5


def test_accuracy_counts_hits_by_hand(trained_cnn):
    rows = S.rows_in_split(trained_cnn.prep.table, trained_cnn.prep.split, S.TEST).head(3)
    wrong = rows.assign(label_group="no-such-group")
    assert accuracy_on(trained_cnn.learn, wrong) == 0.0
    assert accuracy_on(trained_cnn.learn, rows.iloc[:0]) is None


def test_missing_card_is_a_clear_error(trained_cnn, tmp_path):
    lone = tmp_path / "m.pkl"
    lone.write_bytes(trained_cnn.files.pkl.read_bytes())
    with pytest.raises(ShopeeError, match="model card not found"):
        evaluate(lone)


@pytest.mark.parametrize("backend, file", [("onnx", "onnx"), ("torch", "safetensors"), ("fastai", "pkl")])
def test_evaluate_scores_every_backend_as_predict_runs_it(trained_cnn, tmp_path, backend, file):
    """`evaluate` goes through the predictor `predict` uses: each backend and file format gives the card's score."""
    model = getattr(trained_cnn.files, file)
    result = evaluate(model, out=tmp_path / backend, progress=False, backend=backend)
    card = json.loads(trained_cnn.files.card.read_text())
    assert result["test_accuracy"] == pytest.approx(card["test_accuracy"], abs=1e-4)
    assert backend.replace("onnx", "ONNX Runtime").replace("torch", "PyTorch").replace("fastai", "fastai learner") \
        in result["predictor"]


def test_evaluate_refuses_what_predict_refuses(trained_cnn, synthetic, tmp_path):
    with pytest.raises(ShopeeError, match="--tta runs the fastai learner"):
        evaluate(trained_cnn.files.onnx, out=tmp_path / "t", tta=True, progress=False)
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in (trained_cnn.files.pkl, trained_cnn.files.card):  # no int8 graph beside this copy
        shutil.copy(f, alone / f.name)
    with pytest.raises(ShopeeError, match="no int8 graph made from this model"):
        evaluate(alone / trained_cnn.files.pkl.name, data=synthetic, out=tmp_path / "i", precision="int8", progress=False)
