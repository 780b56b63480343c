#!/usr/bin/env bash
# One command for a GPU machine (about 8 minutes on one H100/H200-class GPU): the GPU tests,
# `xyserve bench kernels` GPU section (Meta-Attention against its peers, SmoothGEMM tuned per
# bucket against cuBLAS), the HF oracle on CUDA in float32 and bfloat16 (part of the tests),
# and a short end-to-end run against HF transformers, with CUDA graphs and with enforce_eager
# (the per-step overhead of each).
#
# Works in an image with torch, Triton and transformers but without the project's server
# dependencies: it runs from the checkout with PYTHONPATH=src and imports no server module.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default: $OUT, else ./gpu_check_out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }
status=0

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

stamp "GPU tests (Triton kernels, precision, tuner, oracle on cuda in float32 and bfloat16, CUDA graph replay == eager)"
python3 -m pytest -q -p no:cacheprovider -x --timeout 300 \
  tests/xyserve/test_triton_precision.py tests/xyserve/test_smooth_gemm.py \
  tests/xyserve/test_meta_attention.py tests/xyserve/test_triton_baselines.py \
  tests/xyserve/test_tune_cuda.py tests/xyserve/test_gpu_oracle.py \
  tests/xyserve/test_step_graphs.py tests/xyserve/test_gpu_step_graphs.py 2>&1 | tee "$out/tests.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

stamp "bench kernels --gpu-only (fp16; Hq 32, Hkv 8, D 128; GEMM buckets tuned in the run)"
python3 -m xyserve.cli bench kernels --gpu-only --gpu-tune --heads 32 8 128 --cases 4 \
  --gpu-warmup-ms 10 --gpu-rep-ms 40 --json "$out/bench_kernels.json" 2>"$out/bench_kernels.err" \
  | tee "$out/bench_kernels.log" || status=1

stamp "end to end (bf16, llama-100m config, random weights; CUDA graphs and enforce_eager side by side)"
python3 scripts/gpu_e2e.py --requests 128 --graphs both --json "$out/e2e.json" 2>"$out/e2e.err" \
  | tee "$out/e2e.log" || status=1

stamp "done (status $status)"
exit $status
