"""The bench scripts still run, on tiny inputs; nothing is timed here.

Scripts that measure work inside one process run in this one (runpy), so each test pays no second import of
torch and fastai; those that measure whole processes start them as a user would.
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.device import cpu_has_bf16

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run_script(capsys, monkeypatch):
    """Run a bench script as __main__ in this process; its stdout. Global state it changes is put back."""
    monkeypatch.syspath_prepend(str(BENCH))  # scripts import their neighbours (yardstick, match_speed)
    for name in ("SHOPEE_FASTAI_CACHE",):
        monkeypatch.setenv(name, os.environ[name])

    def run(script: str, args: list[str], expect: str) -> str:
        monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
        try:
            runpy.run_path(str(BENCH / script), run_name="__main__")
        except SystemExit as e:
            assert not e.code, e.code
        finally:
            torch.set_flush_denormal(False)
        out = capsys.readouterr().out
        assert out.startswith("CPU: ") and "usable core" in out  # every figure names its machine
        assert expect in out, out[-2000:]
        return out

    return run


def run_process(script: str, args: list[str], expect: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("CPU: ") and expect in out.stdout, out.stdout[-2000:]
    return out.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("ann_recall.py", ["--n", "3000", "--dim", "32", "--queries", "200"], "recall@10"),
    ("cache_speed.py", ["--synthetic", "4", "--size", "32", "--bs", "2", "--workers", "0"], "synthetic"),
    ("near_duplicates.py", ["--data", str(SAMPLE_DIR), "--seeds", "1"], "overstates"),
    ("denormals.py", ["--arch", "cnn", "--size", "32", "--num-it", "6", "--rounds", "1"], "flushed to zero"),
    ("train_speed.py", ["--data", str(SAMPLE_DIR), "--top-groups", "2", "--size", "32", "--bs", "8", "--epochs", "1",
                        "--precision", "fp32", "--peak-n", "256"], "| frozen part, forward (the cache) |"),
])
def test_in_process_script_runs(run_script, script, args, expect):
    run_script(script, args, expect)


def test_yardstick_times_bf16_only_where_the_cpu_has_it(run_script):
    out = run_script("yardstick.py", ["--n", "256"], "GFLOP/s")
    assert ("bf16 matmul" in out) == cpu_has_bf16()
    assert ("bf16 not timed (no native bf16 on this CPU)" in out) == (not cpu_has_bf16())


def test_match_speed_methods_agree():
    out = run_process("match_speed.py", ["--n", "400", "--dim", "16", "--match-dim", "16"], "--blend --min2")
    assert out.count("True") == 3  # every method found the same matches


def test_predict_speed_backends_agree(run_script, trained_cnn):
    out = run_script("predict_speed.py", ["--photos", str(SAMPLE_DIR / "train_images"), "--n", "8", "--bs", "4",
                                          "--model", str(trained_cnn.files.pkl)], "ONNX Runtime fp32")
    assert "| 100.0 % |" in out  # the ONNX and torch backends agree with the plain loop here


def test_cold_predict_times_whole_processes(run_script, trained_cnn):
    run_script("cold_predict.py", ["--repeat", "0", "--model", str(trained_cnn.files.pkl), "--only", ".onnx", "--n", "0"],
               "| predict 1 photo, .onnx | ")


def test_recipe_study_trains_each_variant_with_train(run_script, tmp_path):
    run_script("recipe_study.py", ["--data", str(SAMPLE_DIR), "--work", str(tmp_path), "--holdout", "_00[1-3]$", "--top-groups", "2",
                                   "--seeds", "1", "--tta", "--variants", "--top-stages 1 --head-views 2 --size 32 --head-epochs 1"],
               "| 2 (2) | --top-stages 1 --head-views 2 --size 32 --head-epochs 1 | ")


def test_int8_scripts_compare_the_graphs_train_wrote(run_script, trained_cnn, synthetic):
    files = trained_cnn.files
    run_script("int8_agreement.py", ["--data", str(synthetic), "--rows", ".", "--model", str(files.pkl)], f"| {files.pkl.name} | ")
    run_script("int8_variants.py", ["--model", str(files.onnx), "--split", str(files.split), "--data", str(synthetic),
                                    "--rows", ".", "minmax"], "| minmax | ")


def test_blend_of_a_model_with_itself_scores_as_the_model(run_script, trained_cnn, synthetic):
    pkl = str(trained_cnn.files.pkl)
    out = run_script("blend.py", ["--data", str(synthetic), "--rows", ".", "--model", pkl, pkl], "| mean of the 2 | ")
    alone = out.split(f"| {pkl} | ")[1].split(" |")[0]
    assert f"| mean of the 2 | **{alone}** |" in out, out


def test_cpu_kernels_times_a_train_process_per_case(run_script):
    run_script("cpu_kernels.py", ["--data", str(SAMPLE_DIR), "--top-groups", "2", "--size", "32", "--epochs", "1",
                                  "--case", "this CPU's kernels"], "| this CPU's kernels | ")


def test_shopee_scale_times_each_command(run_script, tmp_path):
    out = run_script("shopee_scale.py", ["--rows", "60", "--out", str(tmp_path / "shopee"), "--steps", "eda", "prepare"], "built ")
    assert out.count("rc 0") == 3, out  # eda, and prepare twice


def test_matching_protocol_runs(run_script, tmp_path):
    # two seeds: the second must find every group again after the first read its model's calibration groups
    run_script("match_protocol.py", ["--data", str(SAMPLE_DIR), "--work", str(tmp_path), "--seeds", "0", "1", "--test-groups", "2",
                                      "--draws", "1", "--occasion", "_00[1-4]$", "--sources", "backbone,classifier,arcface",
                                      "--flip", "--train-args", "--size 32 --head-epochs 1 --no-refit"], "arcface+flip   the card's settings")



def test_audit_noise_runs_on_a_tiny_catalogue(run_script, tmp_path):
    """Planted noise and split groups on the audit tests' catalogue: the script's measures come out."""
    from ..audit.test_audit import make_catalogue

    data = make_catalogue(tmp_path / "catalogue")
    out = run_script("audit_noise.py", ["--data", str(data), "--work", str(tmp_path / "work"), "--seeds", "0",
                                        "--noise", "0.1", "--titles", "off"], "split groups in the top 5 merge candidates")
    assert "precision@N" in out
