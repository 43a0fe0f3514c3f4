import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shopee_fastai.cli import app

from ..conftest import SIZE

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert lines and all(f in lines[-1] for f in fragments), result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.fixture(scope="module")
def cli_model(synthetic, tmp_path_factory):
    models = tmp_path_factory.mktemp("cli-models")
    result = run("train", "--data", synthetic, "--arch", "cnn", "--epochs", 3, "--size", SIZE, "--bs", 8,
                 "--aug", "none", "--workers", 0, "--lr", 3e-3, "--split", "random", "--models-dir", models, "--name", "tiny",
                 "--int8")
    assert result.exit_code == 0, result.output
    assert "exported" in result.stdout
    return models / "tiny.pkl"


def test_evaluate_prints_test_accuracy(cli_model):
    result = run("evaluate", "--model", cli_model)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout and "valid accuracy" in result.stdout


def test_predict_json_lines(cli_model, synthetic):
    result = run("predict", synthetic / "train_images", "--model", cli_model, "--json", "--top-k", 2)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 36
    first = rows[0]
    assert set(first) == {"image", "predictions"} and len(first["predictions"]) == 2
    p = [r["probability"] for r in first["predictions"]]
    assert p == sorted(p, reverse=True) and set(first["predictions"][0]) == {"label_group", "title", "probability"}
    # each group's title is its most common title in the training table
    assert all(r["title"] == f"product {r['label_group']}" for row in rows for r in row["predictions"])


def test_predict_text_shows_titles_beside_groups(cli_model, synthetic):
    image = sorted((synthetic / "train_images").glob("2002_*.jpg"))[0]
    result = run("predict", image, "--model", cli_model, "--top-k", 1)
    assert result.exit_code == 0, result.output
    assert "2002 · product 2002" in result.stdout


def test_predict_says_which_network_runs_and_why(cli_model, synthetic):
    image = sorted((synthetic / "train_images").glob("*.jpg"))[0]
    said = {extra: run("predict", image, "--model", cli_model, *extra).stderr.splitlines()[0]
            for extra in ((), ("--precision", "int8"), ("--backend", "torch"))}
    assert said[()].startswith("model: ONNX Runtime, fp32 graph tiny.onnx written with the model; int8 is opt-in")
    assert said[("--precision", "int8")].startswith("model: ONNX Runtime, int8 graph (asked for with --precision int8")
    assert said[("--backend", "torch")] == "model: PyTorch on CPU, fp32 (--backend torch)"


def test_predict_goes_on_past_a_bad_image_and_exits_2(cli_model, synthetic, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = sorted((synthetic / "train_images").glob("*.jpg"))[0]
    result = run("predict", good, bad, "--model", cli_model)
    assert str(good) in result.stdout
    one_line_error(result, "1 of 2 image(s) could not be read")
    assert "broken.jpg" in result.stderr


@pytest.mark.parametrize("args, fragments", [
    (["train", "--data", "/no/such/dir"], ["/no/such/dir", "no such data folder"]),
    (["train", "--data", "{synthetic}", "--arch", "resnet_nope"], ["resnet_nope", "not a timm model"]),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--head-views", "0"], ["--head-views 0", "at least 1"]),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--mixup", "-1"], ["--mixup -1.0: must be 0 (off) or positive"]),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--loss", "gce", "--gce-q", "0"], ["--gce-q 0.0: must be in (0, 1]"]),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--gce-q", "0.5"], ["--gce-q shapes the gce loss", "--loss gce"]),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--loss", "gce", "--label-smoothing", "0.2"],
     ["--label-smoothing smooths the softmax loss", "add --loss softmax"]),
    (["evaluate", "--model", "/no/model.pkl"], ["/no/model.pkl", "not found"]),
    (["predict", "/no/image.jpg", "--model", "/no/model.pkl"], ["/no/image.jpg"]),
])
def test_errors_are_one_line_with_exit_code_2(synthetic, args, fragments):
    one_line_error(run(*[a.format(synthetic=synthetic) for a in args]), *fragments)


@pytest.mark.parametrize("args, option", [
    (["lr-find", "--data", "{synthetic}", "--arch", "cnn", "--opt", "rmsprop"], "--opt"),
    (["train", "--data", "{synthetic}", "--arch", "cnn", "--aug", "heavy"], "--aug"),
])
def test_bad_choices_are_refused_by_click_with_exit_code_2(synthetic, args, option):
    # Choice options are enums: click rejects a value outside them itself, before the command runs.
    result = run(*[a.format(synthetic=synthetic) for a in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_lr_find_command_writes_plot(synthetic, tmp_path):
    plot = tmp_path / "lr.png"
    result = run("lr-find", "--data", synthetic, "--arch", "cnn", "--size", SIZE, "--bs", 8, "--workers", 0, "--split", "random", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "valley" in result.stdout and plot.stat().st_size > 1000


def test_sample_command_copies_a_kaggle_layout(tmp_path):
    dest = tmp_path / "s"
    assert run("sample", dest).exit_code == 0
    assert (dest / "train.csv").is_file() and len(list((dest / "train_images").glob("*.jpg"))) > 100
    assert (dest / "LICENSE-GroceryStoreDataset.txt").is_file()
    assert "already in" in run("sample", dest).stdout  # idempotent
    (tmp_path / "other").mkdir()
    one_line_error(run("sample", tmp_path / "other"), "already exists")


def test_root_cli_py_is_the_same_command_and_help_imports_no_torch():
    out = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "predict" in out.stdout
    code = "import sys, shopee_fastai.cli; print('torch' in sys.modules, 'fastai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False False"


def test_eda_prepare_and_split_commands(tmp_path):
    data = tmp_path / "s"
    run("sample", data)
    result = run("eda", "--data", data, "--out", tmp_path / "eda")
    assert result.exit_code == 0, result.output
    assert "147 rows" in result.stdout and (tmp_path / "eda" / "report.md").is_file()
    first = run("prepare", "--data", data, "--size", 64)
    assert first.exit_code == 0 and "147 written" in first.stdout
    assert "0 written, 147 already prepared" in run("prepare", "--data", data, "--size", 64).stdout
    result = run("split", "--data", data, "--out", tmp_path / "split.csv")
    assert result.exit_code == 0, result.output
    assert "a plain random split would put" in result.stdout
    assert "test images beside a near-duplicate in training: 0" in result.stdout
    assert (tmp_path / "split.csv").read_text().startswith("posting_id,split")
    held = run("split", "--data", data, "--holdout", "_00[1-3]$", "--out", tmp_path / "held.csv")
    assert held.exit_code == 0, held.output
    split = pd.read_csv(tmp_path / "held.csv")
    assert set(split.loc[split["split"] == "test", "posting_id"]) == set(split.loc[split["posting_id"].str.contains("_00[1-3]$"), "posting_id"])


def test_embed_and_match_write_a_valid_submission(cli_model, synthetic, tmp_path):
    emb = tmp_path / "e.npy"
    result = run("embed", "--data", synthetic, "--model", cli_model, "--out", emb)
    assert result.exit_code == 0, result.output
    sub = tmp_path / "sub.csv"
    result = run("match", "--data", synthetic, "--embeddings", emb, "--tune", "--min2", "--phash", "--out", sub)
    assert result.exit_code == 0, result.output
    assert "tuned on half the label groups" in result.stdout and "F1" in result.stdout
    import pandas as pd

    table = pd.read_csv(synthetic / "train.csv", dtype=str)
    rows = pd.read_csv(sub, dtype=str)
    assert rows["posting_id"].tolist() == table["posting_id"].tolist()
    ids = set(table["posting_id"])
    for pid, matches in zip(rows["posting_id"], rows["matches"]):
        assert pid in matches.split() and set(matches.split()) <= ids
    one_line_error(run("match", "--data", synthetic, "--embeddings", tmp_path / "none.npy"), "file not found")
    # int8 embeddings come from an embedding model's graph only, asked for as --int8 or with the older spelling
    for flag in (("--int8",), ("--precision", "int8")):
        one_line_error(run("embed", "--data", synthetic, "--model", cli_model, *flag, "--out", tmp_path / "i.npy"),
                       "a classifier; --int8 embeds with an embedding model only")
    assert not (tmp_path / "i.npy").exists()


def test_predict_from_weights_only_export(cli_model, synthetic):
    image = sorted((synthetic / "train_images").glob("*.jpg"))[0]
    from_pkl = run("predict", image, "--model", cli_model, "--json")
    from_safe = run("predict", image, "--model", cli_model.with_suffix(".safetensors"), "--json")
    assert from_safe.exit_code == 0, from_safe.output
    a, b = (json.loads(r.stdout)["predictions"] for r in (from_pkl, from_safe))
    assert [x["label_group"] for x in a] == [x["label_group"] for x in b]
    assert all(abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(a, b))


def test_every_train_option_defaults_to_the_settings_dataclass():
    """What `train --help` shows and runs with is TrainConfig's own default, for every option the two share."""
    from dataclasses import MISSING, fields

    from typer.main import get_command

    from shopee_fastai.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    params = {p.name: p.default for p in get_command(app).commands["train"].params}
    shared = sorted(set(defaults) & set(params))
    assert len(shared) >= 35  # every option but --data
    assert {k: params[k] for k in shared} == {k: defaults[k] for k in shared}
