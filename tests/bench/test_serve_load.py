"""bench/serve_load.py still runs (tiny counts; nothing is timed here)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_load_bench_runs_with_no_errors(trained_cnn, synthetic):
    args = ["--model", str(trained_cnn.files.safetensors), "--photos", str(synthetic / "train_images"), "--n", "12",
            "--clients", "1,4", "--requests", "20", "--seconds", "60", "--rss-at", "10,60"]
    out = subprocess.run([sys.executable, str(BENCH / "serve_load.py"), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 1 | 20 |" in out.stdout and "| 4 | 20 |" in out.stdout
    assert "after 10 requests" in out.stdout and "after 60" in out.stdout
