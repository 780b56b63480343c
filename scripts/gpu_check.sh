#!/usr/bin/env bash
# One command for a GPU machine (at most about 13 minutes on one H100/H200-class GPU, each stage
# under its own time limit, the most informative first, so that a lease of 15 minutes brings
# back every stage that finished): the GPU tests; a short end-to-end run against HF
# transformers, with CUDA graphs and with enforce_eager (the per-step overhead of each);
# `xyserve bench kernels` GPU section (Meta-Attention against its peers, SmoothGEMM on its
# default tiles against cuBLAS); then, in the time left, the same GEMM points tuned per bucket.
# The HF oracle on CUDA in float32 and bfloat16 is part of the tests.
#
# Works in an image with torch, Triton and transformers but without the project's server
# dependencies: it runs from the checkout with PYTHONPATH=src and imports no server module.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default: $OUT, else ./gpu_check_out)
# Stage limits in seconds (environment): GPU_CHECK_TESTS_S (240), GPU_CHECK_E2E_S (150),
# GPU_CHECK_KERNELS_S (200), GPU_CHECK_TUNE_S (180; 0 skips the tuned run).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }
status=0
# run LIMIT NAME CMD...: the command under its limit, its output in $out/NAME.log (the end shown)
run() {
  local limit=$1 name=$2
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "   (stopped at its ${limit} s limit)"
  tail -n 25 "$out/$name.log"
  return "$rc"
}

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

stamp "GPU tests (Triton kernels, precision, tuner, oracle on cuda in float32 and bfloat16, CUDA graph replay == eager)"
run "${GPU_CHECK_TESTS_S:-240}" tests python3 -m pytest -q -p no:cacheprovider -rfE --timeout 200 \
  tests/xyserve/test_triton_precision.py tests/xyserve/test_smooth_gemm.py \
  tests/xyserve/test_meta_attention.py tests/xyserve/test_triton_baselines.py \
  tests/xyserve/test_tune_cuda.py tests/xyserve/test_gpu_oracle.py \
  tests/xyserve/test_step_graphs.py tests/xyserve/test_gpu_step_graphs.py || status=1

stamp "end to end (bf16, llama-100m config, random weights; CUDA graphs and enforce_eager side by side)"
run "${GPU_CHECK_E2E_S:-150}" e2e python3 scripts/gpu_e2e.py --requests 128 --graphs both \
  --json "$out/e2e.json" || status=1

stamp "bench kernels --gpu-only (fp16; Hq 32, Hkv 8, D 128; GEMM on its default tiles)"
run "${GPU_CHECK_KERNELS_S:-200}" bench_kernels python3 -m xyserve.cli bench kernels --gpu-only \
  --heads 32 8 128 --cases 4 --gpu-warmup-ms 5 --gpu-rep-ms 20 \
  --json "$out/bench_kernels.json" || status=1

if [ "${GPU_CHECK_TUNE_S:-180}" != 0 ]; then
  stamp "bench kernels --gpu-only --gpu-tune (the GEMM buckets tuned in the run; attention again)"
  run "${GPU_CHECK_TUNE_S:-180}" bench_kernels_tuned python3 -m xyserve.cli bench kernels \
    --gpu-only --gpu-tune --heads 32 8 128 --cases 4 --gpu-warmup-ms 5 --gpu-rep-ms 20 \
    --json "$out/bench_kernels_tuned.json" || status=1
fi

stamp "done (status $status)"
exit $status
