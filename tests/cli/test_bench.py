"""The bench scripts still run (on tiny inputs; nothing is timed here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from shopee_fastai.data.table import SAMPLE_DIR

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script, args, expect", [
    ("match_speed.py", ["--n", "400", "--dim", "16", "--match-dim", "16"], "--blend --min2"),
    ("ann_recall.py", ["--n", "3000", "--dim", "32", "--queries", "200"], "recall@10"),
    ("cache_speed.py", ["--synthetic", "4", "--size", "32", "--bs", "2", "--workers", "0"], "synthetic"),
    ("near_duplicates.py", ["--data", str(SAMPLE_DIR), "--seeds", "1"], "overstates"),
])
def test_bench_script_runs(script, args, expect):
    run_bench(script, args, expect)


def run_bench(script, args, expect):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
    if script == "match_speed.py":
        assert out.stdout.count("True") == 3  # every method found the same matches
    return out.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("predict_speed.py", ["--photos", str(SAMPLE_DIR / "train_images"), "--n", "8", "--bs", "4"], "ONNX Runtime fp32"),
    ("cold_start.py", ["--repeat", "0"], "predict 1 photo, .onnx"),
])
def test_speed_bench_runs_on_a_trained_model(trained_cnn, script, args, expect):
    out = run_bench(script, [*args, "--model", str(trained_cnn.files.pkl)], expect)
    if script == "predict_speed.py":
        assert "| 100.0 % |" in out  # the ONNX and torch backends agree with the plain loop here


def test_train_and_denormal_benches_run():
    run_bench("train_speed.py", ["--data", str(SAMPLE_DIR), "--images", "16", "--bs", "8", "--size", "32", "--rounds", "1"], "× plain")
    run_bench("denormals.py", ["--arch", "cnn", "--size", "32", "--num-it", "12", "--rounds", "1"], "flushed to zero")
    run_bench("yardstick.py", [], "GFLOP/s")


def test_matching_protocol_runs(tmp_path):
    run_bench("match_protocol.py", ["--data", str(SAMPLE_DIR), "--work", str(tmp_path), "--seeds", "1", "--test-groups", "2",
                                    "--draws", "1", "--occasion", "_00[1-4]$", "--sources", "backbone,arcface",
                                    "--train-args", "--size 32 --head-epochs 1"], "arcface    calibrated")


def test_accuracy_studies_run(tmp_path):
    held_out = ["--data", str(SAMPLE_DIR), "--holdout", "_00[1-3]$", "--top-groups", "0", "--seeds", "1"]
    run_bench("recipe_study.py", [*held_out, "--sizes", "224", "--only", "0", "--cache", str(tmp_path / "r")], "| all (6) | fastai |")
    run_bench("partial_study.py", [*held_out, "--epochs", "1", "--cache", str(tmp_path / "p")], "| all (6) | 6 |")
