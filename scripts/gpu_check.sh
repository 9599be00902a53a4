#!/usr/bin/env bash
# One short CUDA check on a machine with an NVIDIA GPU (a few minutes): optimize the bundled open_nsfw, compile the
# original and the optimized model for CUDA with TVM, time both on the GPU, and verify the chain original
# (onnxruntime) -> optimized (onnxruntime) -> optimized compiled by TVM and run on the GPU.
#
#   bash scripts/gpu_check.sh [ARCH] [OUTDIR]   # ARCH defaults to the GPU's own (nvidia-smi), e.g. sm_90
#
# Needs: the project installed (README command 1), an NVIDIA driver (libcuda.so.1), the CUDA 13 runtime
# (libcudart.so.13, e.g. `pip install nvidia-cuda-runtime`) that the apache-tvm wheel's CUDA runtime links to, and
# nvcc (device-code check). PYTHON picks the interpreter (default python3). Packages and reports stay in OUTDIR.
# TUNE_TRIALS=N (default 0: skip) also tunes the optimized model with N MetaSchedule trials timed on the GPU,
# then times and verifies that package too (about a minute for N=16).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
arch="${1:-}"
if [ -z "$arch" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
  arch="sm_${cap}"
fi
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
ob() { "$py" -m onebyone "$@"; }
"$py" - <<'PY'
import sys

import tvm

from onebyone.errors import OneByOneError
from onebyone.runtime.cuda import load_cuda_runtime

try:
    load_cuda_runtime()
except OneByOneError as exc:
    sys.exit(f"gpu_check: {exc}")
dev = tvm.cuda(0)
if not dev.exist:
    sys.exit("gpu_check: TVM sees no CUDA device")
print(f"gpu_check: TVM {tvm.__version__} sees {dev.device_name} (compute {dev.compute_version})")
PY
target="cuda:arch=$arch"
ob optimize opennsfw -o "$out/nsfw.onnx" --policy energy --energy 0.9 --round-to 8 --report "$out/optimize.json"
ob compile opennsfw -o "$out/pkg-original" --target "$target"
ob compile "$out/nsfw.onnx" -o "$out/pkg-optimized" --target "$target"
ob run "$out/pkg-original" --time
ob run "$out/pkg-optimized" --time
ob verify opennsfw "$out/nsfw.onnx" --target "$target" --package "$out/pkg-optimized" \
  --max-rel-error 0.05 --min-cosine 0.995 --min-top1 0.95 --report "$out/verify.json"
if [ "${TUNE_TRIALS:-0}" -gt 0 ]; then
  ob compile "$out/nsfw.onnx" -o "$out/pkg-tuned" --target "$target" --tune-trials "$TUNE_TRIALS" --tuning-db "$out/db"
  ob run "$out/pkg-tuned" --time
  ob verify opennsfw "$out/nsfw.onnx" --target "$target" --package "$out/pkg-tuned" \
    --max-rel-error 0.05 --min-cosine 0.995 --min-top1 0.95 --report "$out/verify-tuned.json"
fi
echo "gpu_check: PASS ($arch)"
