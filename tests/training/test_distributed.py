"""Data-parallel training on the CPU: 2 processes (gloo), synchronised gradients, one export."""

import os
import re
import subprocess
import sys

from shopee_fastai.config import CHECKSUM_ENV

from ..conftest import SIZE


def test_two_processes_train_in_sync_and_export_once(synthetic, tmp_path):
    models = tmp_path / "m"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "shopee_fastai", "train",
           "--data", str(synthetic), "--arch", "cnn", "--split", "random", "--epochs", "2", "--size", str(SIZE),
           "--bs", "8", "--aug", "none", "--workers", "0", "--models-dir", str(models), "--name", "dp"]
    env = {**os.environ, CHECKSUM_ENV: "1", "TMPDIR": str(tmp_path)}  # torchrun's logs go to tmp_path, not /tmp
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    sums = dict(re.findall(r"rank (\d)/2: weights checksum (\S+)", out.stdout))
    assert set(sums) == {"0", "1"}  # both ranks ran
    assert sums["0"] == sums["1"]  # each saw half the batches, yet the weights agree: gradients were all-reduced
    assert out.stdout.count("exported") == 1
    assert sorted(p.name for p in models.iterdir()) == ["dp.curves.png", "dp.json", "dp.onnx", "dp.pkl", "dp.safetensors",
                                                         "dp.split.csv"]  # the int8 graph only with --int8
