"""The bench scripts still run (on tiny inputs; nothing is timed here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from shopee_fastai.data import SAMPLE_DIR

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script, args, expect", [
    ("match_speed.py", ["--n", "400", "--dim", "16"], "chunked"),
    ("cache_speed.py", ["--synthetic", "4", "--size", "32", "--bs", "2", "--workers", "0"], "synthetic"),
    ("near_duplicates.py", ["--data", str(SAMPLE_DIR), "--seeds", "1"], "overstates"),
    ("matching_grocery.py", ["--data", str(SAMPLE_DIR), "--trained-groups", "2", "--seeds", "1"], "held-out F1"),
])
def test_bench_script_runs(script, args, expect):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
    if script == "match_speed.py":
        assert out.stdout.count("True") == 3  # every method found the same matches
