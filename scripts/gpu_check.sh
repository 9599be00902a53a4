#!/usr/bin/env bash
# One short CUDA check on a machine with an NVIDIA GPU (under 5 minutes): optimize a bundled model, compile it for
# CUDA with TVM, run it on the GPU and verify it against onnxruntime, end to end.
#
#   bash scripts/gpu_check.sh [ARCH]        # ARCH defaults to the GPU's own (nvidia-smi), e.g. sm_90
#
# Needs: the project installed (README command 1) and a TVM build whose runtime has CUDA. The PyPI apache-tvm
# 0.27 wheel generates CUDA code but its runtime has no CUDA loader ("loader of that name is not registered");
# the script says so and stops if that is the case.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-}"
if [ -z "$arch" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
  arch="sm_${cap}"
fi
python - <<PY
import sys, tvm
if not tvm.cuda(0).exist:
    sys.exit("gpu_check: no CUDA device visible to TVM")
if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
    sys.exit("gpu_check: this TVM runtime has no CUDA support (PyPI wheel); build TVM with USE_CUDA=ON")
print("TVM sees", tvm.cuda(0).device_name)
PY
out=$(mktemp -d)
onebyone optimize opennsfw -o "$out/nsfw.onnx" --policy energy --energy 0.9 --round-to 8
onebyone compile "$out/nsfw.onnx" -o "$out/pkg" --target "cuda:arch=$arch"
onebyone run "$out/pkg" --time
onebyone verify opennsfw "$out/nsfw.onnx" --target "cuda:arch=$arch" --package "$out/pkg" \
  --max-rel-error 0.05 --min-cosine 0.995 --min-top1 0.95
echo "gpu_check: PASS ($arch)"
