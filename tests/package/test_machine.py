"""The machine report: which CPU and instruction sets, how many cores this process may use, and `doctor`."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from shopee_fastai.cli import app
from shopee_fastai.machine import CPU, cpu, summary


def test_usable_cores_follow_affinity_and_a_container_quota():
    assert CPU("x", "x86_64", logical=64, affinity=64, quota=2.0).usable == 2
    assert CPU("x", "x86_64", logical=64, affinity=8, quota=1.5).usable == 2  # a part-core quota still runs a thread
    assert CPU("x", "x86_64", logical=64, affinity=4, quota=None).usable == 4


def test_features_name_what_this_cpu_has_and_lacks():
    flags = set(open("/proc/cpuinfo").read().split()) if sys.platform == "linux" else set()
    c = cpu()
    if c.arch == "x86_64":
        assert c.has("AVX2") == ("avx2" in flags) and c.has("AVX-512") == ("avx512f" in flags)
        assert c.has("VNNI") == bool({"avx512_vnni", "avx_vnni"} & flags)
    line = summary()
    assert line.startswith("CPU: ") and f"{c.usable} usable core(s) of {c.logical}" in line
    zen3 = CPU("AMD EPYC 7B13", "x86_64", frozenset({"avx2", "fma"}), family=25, model_number=1)
    assert zen3.generation == "Zen 3" and zen3.features() == "AVX2, no AVX-512 VNNI BF16 AMX"
    assert CPU("AMD EPYC", "x86_64", frozenset({"avx2", "avx512f"}), family=25, model_number=17).generation == "Zen 4"


def test_doctor_prints_what_a_bug_report_needs():
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    for part in ("CPU: ", "usable", "threads: ", "GPU: ", "ONNX Runtime providers: ", "versions: torch ", "cache: "):
        assert part in r.output
    report = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    assert report["usable_cores"] == cpu().usable and "CPUExecutionProvider" in report["onnxruntime_providers"]


@pytest.mark.skipif(not shutil.which("taskset") or cpu().logical < 2, reason="needs taskset and two CPUs")
def test_a_process_held_to_fewer_cores_runs_that_many_threads():
    """What a container's CPU quota does to os.cpu_count(), taskset does to the affinity: torch and ONNX Runtime
    must take the cores the process has, not the ones the machine shows."""
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "shopee_fastai", "doctor", "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["usable_cores"] == 1 and report["threads"] == 1 and report["torch_threads"] == 1
