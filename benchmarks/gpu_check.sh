#!/usr/bin/env bash
# The one-call GPU check: build, test, sanitize and benchmark on a fresh GPU machine (no network).
#   bash benchmarks/gpu_check.sh OUT_DIR
# Writes logs and CSVs under OUT_DIR, prints a short table last, and exits non-zero if any step failed.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=()
step() {  # step NAME CMD...: run CMD, log it to OUT_DIR/NAME.log, remember a failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)"; else echo "   FAILED ($((SECONDS - t0)) s), tail of $out/$name.log:"; tail -25 "$out/$name.log"; failed+=("$name"); fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
step build python3 -m pip install --no-build-isolation --no-deps -v -e .
if [[ " ${failed[*]} " == *" build "* ]]; then echo "build failed: nothing else can run"; exit 1; fi
step env python3 -c "import torch, triton, twolayer_ops as t; print(torch.__version__, triton.__version__, torch.cuda.get_device_name()); print('cuda backends:', t.available_backends('cuda'))"
grep -E "ptxas info|spill" "$out/build.log" >"$out/ptxas.txt" || true
step tests python3 -m pytest -q -rs --durations=15
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitize_$tool" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -m benchmarks.sanitize_kernels
  done
else
  echo "compute-sanitizer not found"; failed+=(sanitize)
fi
step bench_bf16 python3 -m benchmarks.linear_relu --device cuda --dtype bfloat16 --shapes 8192x4096x4096 --csv "$out/bench_bf16.csv"
step bench_fp32 python3 -m benchmarks.linear_relu --device cuda --dtype float32 --shapes 64x1000x100,64x100x10,4096x4096x4096 --csv "$out/bench_fp32.csv"

echo; echo "== tests"; tail -3 "$out/tests.log"
for b in bench_bf16 bench_fp32; do echo; sed -n '/^| shape/,$p' "$out/$b.log"; done
if ((${#failed[@]})); then echo; echo "FAILED steps: ${failed[*]}"; exit 1; fi
echo; echo "all steps passed"
