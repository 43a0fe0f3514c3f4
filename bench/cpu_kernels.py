"""Which CPU trait makes training slow: the default recipe's epoch under this CPU's own kernels, under the
AVX2 kernels a CPU without AVX-512 gets, with threads oversubscribed, and beside another busy job, as whole
`train` processes.

PyTorch picks its kernels from the CPU at start-up; ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 make
it pick those of an AVX2-only CPU (Zen 3, older Intel) on this one, so both kinds run side by side on one
machine. ONNX Runtime (the frozen-part cache, `predict`) has no such switch and keeps this CPU's kernels.
Each case trains once; the median of its epochs' seconds (the card's history) is the time of one epoch over
the cached views, free of start-up, caching and export. "Beside another job"
keeps every core busy with a spinning process meanwhile, as a shared CI machine or a laptop does. Cases
alternate.

    python bench/cpu_kernels.py --data ../shared/data/grocery-store --top-groups 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.machine import summary, threads

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CASES = {  # name: (environment, busy processes beside)
    "this CPU's kernels": ({}, 0),
    "AVX2 kernels (PyTorch and oneDNN)": (AVX2, 0),
    "threads oversubscribed 4x": ({"OMP_NUM_THREADS": str(4 * threads())}, 0),
    "beside another job": ({}, threads()),
    "1 thread, beside another job": ({"OMP_NUM_THREADS": "1"}, threads()),
    "passive OpenMP waits": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "passive OpenMP waits, beside another job": ({"OMP_WAIT_POLICY": "PASSIVE"}, threads()),
}
SPIN = "while True: pass"


def train_seconds(data: Path, work: Path, case: tuple[dict[str, str], int], args) -> tuple[float, float]:
    """Whole-process seconds of `train`, and the median of its epochs' seconds from the card's history."""
    env, busy = case
    name = f"k{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "shopee_fastai", "train", "--data", str(data), "--arch", OFFLINE_ARCH, "--pretrained",
           "--split", "random", "--top-groups", str(args.top_groups), "--head-epochs", str(args.epochs),
           "--size", str(args.size), "--ensemble", "1", "--models-dir", str(work), "--name", name]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        wall = time.perf_counter() - start
    finally:
        for p in spinners:
            p.kill()
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    card = json.loads((work / f"{name}.json").read_text())
    return wall, statistics.median(h["seconds"] for h in card["history"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--top-groups", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3, help="--head-epochs of each run; the median epoch is reported.")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--case", action="append", choices=list(CASES), help="A case to run (repeat it; default: all).")
    args = ap.parse_args()
    print(summary())
    cases = [c for c in CASES if args.case is None or c in args.case]
    per_epoch: dict[str, list[float]] = {c: [] for c in cases}
    whole: dict[str, list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for case in cases:
                wall, epoch = train_seconds(args.data, Path(tmp), CASES[case], args)
                per_epoch[case].append(epoch)
                whole[case].append(wall)
    base = statistics.median(per_epoch[cases[0]])
    print(f"default recipe, {args.data.name}, top {args.top_groups or 'all'} groups, {args.size} px, median of {args.rounds}")
    print(f"| case | s per epoch over the cache | × this CPU's kernels | whole `train --head-epochs {args.epochs}` s |")
    print("|---|---|---|---|")
    for case in cases:
        e = statistics.median(per_epoch[case])
        print(f"| {case} | {e:.1f} | {e / base:.2f} | {statistics.median(whole[case]):.1f} |")


if __name__ == "__main__":
    main()
