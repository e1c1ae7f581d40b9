#!/usr/bin/env bash
# The one-call GPU check, for a fresh GPU machine with torch and triton but no network:
#   bash benchmarks/gpu_check.sh OUT_DIR [all|more|test|report|tune]
#   all    (for a lease that affords one call) the build, then in order of importance until the time
#          budget is spent: the CUDA tests (newest work first), then the steps of `more`: the kernel
#          benchmark of the issue-6 shapes and the seed's layers, the forward with and without its bias,
#          float32 in the 128-thread SIMT tiles (off until timed) and their memcheck,
#          the same sm90 shapes under the GEMM variants that are off until timed (the backward's
#          overlapped mask first, then two-block clusters, the TMA-store epilogue, 16-byte register
#          stores, the merged backward, stream-K) and their memcheck (the overlapped mask's first),
#          the seed's layers replayed from CUDA graphs (and under the portable GEMMs' switches that are
#          off until timed: deeper splits over K, float32's small-output tiles), ...
#   more   (a second call on the same warm machine) every step of `all` after the tests, skipping the
#          steps an earlier call on this machine finished with the same sources: the benchmarks and
#          variants above, the Hopper evidence, the Triton TMA backward's timing, the fused-step
#          benchmark, memcheck of the default sm90 path, memcheck and racecheck of every native
#          kernel, Nsight Compute profiles of the sm90 and SIMT forwards next to cuBLAS's.
# Each other stage fits one 10-minute call; run them in this order on a warm machine (the build is reused):
#   test   (default) build; the CUDA-marked tests (native, triton, the Hopper paths and the fused
#          step); compute-sanitizer memcheck, racecheck and synccheck on every native CUDA kernel.
#   report the benchmark report: kernels (every provider, fwd/bwd/fwdbwd) and trainers; writes the
#          CSVs, plots, report.md and the GPU section of docs/PERFORMANCE.md (copied to OUT_DIR).
#   tune   the Hopper evidence (SASS, ptxas, sm90 timings), the sm90 sanitizer run, the fused-step
#          benchmark and the Triton config sweep.
# The logs go to OUT_DIR/logs.tar.gz, refreshed after every step (so a call cut short keeps them);
# OUT_DIR holds at most 8 files. Prints a short table last; exits non-zero when any step failed or
# did not fit. GPU_CHECK_BUDGET (seconds, default 570) bounds the whole call: each step's time limit
# is cut to what is left, and a step that would get under 30 s is skipped and listed.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [all|test|report|tune]}
stage=${2:-test}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out"
logs=$(mktemp -d)/logs
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
failed=()
skipped=()
deadline=$((SECONDS + ${GPU_CHECK_BUDGET:-570}))

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log it, remember a failure
  local name=$1 limit=$2; shift 2
  # `more` skips what an earlier call on this warm machine already did with the same sources.
  if [[ $stage == more && -e $done_dir/$name ]]; then echo "== $name: done by an earlier call"; return; fi
  local left=$((deadline - SECONDS))
  if ((left < 30)); then
    echo "== $name: skipped, the time budget is spent"; skipped+=("$name"); return
  fi
  ((limit > left)) && limit=$left
  echo "== $name: $*"
  local t0=$SECONDS
  if timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
    mkdir -p "$done_dir" && touch "$done_dir/$name"
  else
    echo "   FAILED ($((SECONDS - t0)) s; limit $limit s), tail of $name.log:"
    tail -25 "$logs/$name.log"
    failed+=("$name")
  fi
  tar -czf "$out/logs.tar.gz" -C "$(dirname "$logs")" logs
}

finish() {
  ((${#skipped[@]})) && { echo; echo "SKIPPED steps (no time left): ${skipped[*]}"; }
  if ((${#failed[@]})); then echo; echo "FAILED steps: ${failed[*]}"; exit 1; fi
  ((${#skipped[@]})) && exit 1
  echo; echo "all steps passed"
  exit 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
# Build once per machine: a warm machine keeps the extension of the same sources.
stamp=$(cat setup.py csrc/*.cpp csrc/*.h csrc/cuda/* | sha1sum | cut -c1-12)
done_dir=build/gpu_check_done/$(cat setup.py csrc/*.cpp csrc/*.h csrc/cuda/* benchmarks/* tests/*.py twolayer_ops/*.py \
  twolayer_ops/*/*.py 2>/dev/null | sha1sum | cut -c1-12)
if [[ "$(cat build/.gpu_check_stamp 2>/dev/null)" != "$stamp" ]] || ! "$PY" -c "import twolayer_ops._C" 2>/dev/null; then
  step build 400 "$PY" -m pip install --no-build-isolation --no-deps -v -e .
  if [[ " ${failed[*]} " == *" build "* ]]; then finish; fi
  mkdir -p build && echo "$stamp" >build/.gpu_check_stamp
  grep -E "ptxas info|spill" "$logs/build.log" >"$logs/ptxas.txt" || true
fi
step env 60 "$PY" -c "import numpy, torch, triton, twolayer_ops as t; print(torch.__version__, triton.__version__, numpy.__version__, torch.cuda.get_device_name()); print('cuda backends:', t.available_backends('cuda'), 'cpu backends:', t.available_backends('cpu'))"
# How the extension was built on this machine (its own compiler): it must use the process's libstdc++.
step build_checks 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_build.py

summarize_tests() {  # -v names each test as it ends, so a run cut off by its time limit still says what failed
  echo; echo "== tests"
  [[ -f $logs/tests.log ]] || { echo "the tests did not run"; return; }
  grep -E "^=+ .* in [0-9.]+s" "$logs/tests.log" | tail -1
  echo "$(grep -cE " PASSED( |$)" "$logs/tests.log") passed so far; failures:"
  grep -E " (FAILED|ERROR)( |$)" "$logs/tests.log" | head -40
}

# The issue-6 shapes, in order of importance (a step cut short still logs each finished case), then
# the seed net's two layers (launch-bound: microseconds).
HOPPER_CASES="bfloat16:8192x4096x4096+8192x4096x16384+8192x8192x8192;float16:8192x4096x4096;tf32:4096x4096x4096+8192x4096x4096;float32:4096x4096x4096"
SEED_CASES="float32:64x1000x100+64x100x10"
# The sm90 shapes again under each GEMM variant that is off until timed (two-block clusters sharing B by
# TMA multicast; the TMA-store epilogue; both; 16-byte stores from the registers; the backward's dX and dW
# in one launch; stream-K for the last waves), one process each (the switches are read once); before them
# the masked gradient written during the backward's first GEMM, on the 16-bit backward it changes.
VARIANT_CASES="bfloat16:8192x4096x4096+8192x4096x16384+8192x8192x8192;float16:8192x4096x4096;tf32:4096x4096x4096+8192x4096x4096"
variant_kernels() {  # a variant that fails (a trap, a wrong result) does not keep the others from running
  local spec name status=0
  # The newest first, on what it changes alone: the 16-bit backward (the forward runs the default kernels).
  echo "== variant overlap_mask: TWOLAYER_OPS_SM90_OVERLAP_MASK=1"
  TWOLAYER_OPS_SM90_OVERLAP_MASK=1 "$PY" -m benchmarks.linear_relu --device cuda \
    --cases "bfloat16:8192x4096x4096+8192x4096x16384+8192x8192x8192;float16:8192x4096x4096" --modes fwdbwd \
    --providers native,mm --csv "$logs/kernels_overlap_mask.csv" || status=1
  for spec in "clusters CLUSTER=2" "tma_store TMA_STORE=1" "clusters_tma_store CLUSTER=2 TMA_STORE=1" \
      "wide_stores WIDE_STORES=1" "merged_backward MERGED_BACKWARD=1" "stream_k STREAM_K=1"; do
    set -- $spec
    name=$1; shift
    echo "== variant $name: ${*/#/TWOLAYER_OPS_SM90_}"
    env "${@/#/TWOLAYER_OPS_SM90_}" "$PY" -m benchmarks.linear_relu --device cuda --cases "$VARIANT_CASES" \
      --modes fwd,fwdbwd --providers native,mm --csv "$logs/kernels_$name.csv" || status=1
  done
  return $status
}
graph_kernels() {  # the seed's layers, every provider replayed from CUDA graphs (the GPU's time without the
  # host's); then native alone under the switches that are off until timed (slices of 2 K-tiles, float32's
  # small-output tiles) and without the L2 prefetch (on by default, untimed), with graphs and without (a
  # split's reduce launch costs host time)
  local status=0 spec graph
  echo "== variant defaults (CUDA graphs)"
  "$PY" -m benchmarks.linear_relu --device cuda --cases "$SEED_CASES" --cuda-graph --modes fwd,fwdbwd \
    --providers native,triton,mm,addmm_act,compile --csv "$logs/kernels_graph.csv" || status=1
  for spec in "8 0 0 no_l2_prefetch" "2 0 1 splitk2" "8 1 1 small_tiles" "2 1 1 small_tiles_splitk2"; do
    set -- $spec
    for graph in --cuda-graph ""; do
      echo "== variant $4${graph:+ (CUDA graphs)}: TWOLAYER_OPS_SPLITK_MIN_KTILES=$1 TWOLAYER_OPS_SIMT_SMALL_TILES=$2 TWOLAYER_OPS_L2_PREFETCH=$3"
      TWOLAYER_OPS_SPLITK_MIN_KTILES=$1 TWOLAYER_OPS_SIMT_SMALL_TILES=$2 TWOLAYER_OPS_L2_PREFETCH=$3 "$PY" -m benchmarks.linear_relu \
        --device cuda --cases "$SEED_CASES" $graph --modes fwd,fwdbwd --providers native,mm \
        --csv "$logs/kernels_$4${graph:+_graph}.csv" || status=1
    done
  done
  return $status
}
export -f variant_kernels graph_kernels
export PY logs VARIANT_CASES SEED_CASES
# Tests spread over processes (Triton compiles on the CPU), each test capped so a hung kernel costs one test.
parallel=()
# loadgroup: the cases of test_hopper's sm90 worker go to one process (each process that takes one runs
# the whole worker on the GPU).
if "$PY" -c "import xdist" 2>/dev/null; then
  parallel+=(-n 12)
  "$PY" -c "from xdist.scheduler import LoadGroupScheduling" 2>/dev/null && parallel+=(--dist loadgroup)
fi
"$PY" -c "import pytest_timeout" 2>/dev/null && parallel+=(--timeout 150 --timeout-method thread)

# The Hopper file first (its variant workers are the longest tests), then the files no GPU has run yet,
# the other Hopper and fused-step files, the long property test last (xdist hands tests out in order).
TEST_ORDER=(tests/test_hopper.py tests/test_cuda_graphs.py tests/test_portable_switches.py tests/test_export.py
  tests/test_transforms.py tests/test_triton_hopper.py tests/test_fused_step_cuda.py tests/test_fused_step.py)
for f in tests/test_*.py; do
  [[ " ${TEST_ORDER[*]} " == *" $f "* || $f == tests/test_properties.py ]] || TEST_ORDER+=("$f")
done
TEST_ORDER+=(tests/test_properties.py)
more_steps() {  # everything of `all` after the tests, so that a `more` call goes on where `all` stopped
  # The default paths: the sm90 native path (TF32 too), the portable Triton kernels.
  step kernels 120 "$PY" -m benchmarks.linear_relu --device cuda --cases "$HOPPER_CASES;$SEED_CASES" \
    --modes fwd,fwdbwd --providers native,triton,mm,addmm_act --csv "$logs/kernels.csv"
  # What the bias costs the forward: the same kernels with bias None, same run. The sm90 GEMMs without
  # bias (the backward's) ran within about 1.5% of cuBLAS on 11-28, the forward with bias at 1.05x-1.12x.
  step kernels_bias 60 "$PY" -m benchmarks.linear_relu --device cuda \
    --cases "bfloat16:8192x4096x4096+8192x4096x16384+8192x8192x8192;tf32:4096x4096x4096" --modes fwd \
    --providers native,native_nobias,triton,triton_nobias,mm --csv "$logs/kernels_bias.csv"
  # float32's 128-thread tiles (off until timed) against the kernels step's float32 rows, which ran the
  # default 256-thread tiles (forward 1.39x cuBLAS SGEMM on 11-28), then memcheck of those kernels.
  step kernels_simt_wide 60 env TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES=1 "$PY" -m benchmarks.linear_relu --device cuda \
    --cases "float32:4096x4096x4096" --modes fwd,fwdbwd --providers native,mm --csv "$logs/kernels_simt_wide.csv"
  step sanitize_simt_wide 40 env TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m benchmarks.sanitize_kernels native
  step kernels_variants 260 bash -c variant_kernels
  # The overlapped mask on 7 blocks: ragged chunks past M and N, producers waiting on other blocks' writers.
  step sanitize_sm90_overlap 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 TWOLAYER_OPS_SM90_OVERLAP_MASK=1 \
    TWOLAYER_OPS_SM90_GRID=7 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90_overlap.json" ragged
  # The sm90 memchecks run without PyTorch's caching allocator (memcheck sees its segments, not the tensors
  # in them: a store past a tensor's end would pass), and the worker exits 1 on a failed case or none run.
  step sanitize_sm90_variants 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 TWOLAYER_OPS_SM90_CLUSTER=2 \
    TWOLAYER_OPS_SM90_TMA_STORE=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90_variants.json" ktail
  step sanitize_sm90_wide_merged 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 TWOLAYER_OPS_SM90_WIDE_STORES=1 \
    TWOLAYER_OPS_SM90_MERGED_BACKWARD=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90_wide.json" ragged
  # Stream-K on a grid of 7 blocks, where the ragged 1000x1024x1000 cases split tiles between blocks.
  step sanitize_sm90_stream_k 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 TWOLAYER_OPS_SM90_STREAM_K=1 \
    TWOLAYER_OPS_SM90_GRID=7 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90_stream_k.json" ragged
  step kernels_graph 150 bash -c graph_kernels
  # The portable GEMMs' switches that kernels_graph times (slices of 2 K-tiles, float32's small-output tiles),
  # under memcheck: no GPU has run them yet.
  step sanitize_portable_switches 40 env TWOLAYER_OPS_SPLITK_MIN_KTILES=2 TWOLAYER_OPS_SIMT_SMALL_TILES=1 \
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m benchmarks.sanitize_kernels native
  step hopper_evidence 100 env BUILD_LOG="$logs/build.log" bash benchmarks/hopper_evidence.sh "$logs/hopper"
  # The Triton TMA backward (correct on the H200, off until timed): against the kernels step's triton
  # fwdbwd rows, which ran the portable backward.
  step kernels_tma_backward 60 "$PY" -c 'import sys; from twolayer_ops.triton_kernels import hopper
hopper.BACKWARD = True
from benchmarks import linear_relu; linear_relu.main(sys.argv[1:])' --device cuda --cases "$HOPPER_CASES" \
    --modes fwdbwd --providers triton,mm --csv "$logs/kernels_tma_backward.csv"
  # Measured and clean on both H200 runs: the fused step's speed, memcheck of the default sm90 path.
  step fused_step_bench 60 "$PY" -m benchmarks.fused_step_bench
  step sanitize_sm90 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90.json" tiles
  for tool in memcheck racecheck; do
    step "sanitize_$tool" 40 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" -m benchmarks.sanitize_kernels native
  done
  # Where the sm90 and SIMT GEMMs lose to cuBLAS: Nsight Compute, one launch of each, next to cuBLAS's.
  step profile_gemms 120 bash benchmarks/profile_gemms.sh "$logs/profiles"
}

case $stage in
  all)
    # Newest and least-proven work first: the Hopper and fused-step test files lead the test run.
    step tests 260 "$PY" -m pytest -v -rs -m cuda --durations=20 "${parallel[@]}" "${TEST_ORDER[@]}"
    more_steps
    summarize_tests
    echo; tail -26 "$logs/fused_step_bench.log" 2>/dev/null; echo; tail -50 "$logs/hopper_evidence.log" 2>/dev/null
    echo; cat "$logs/profile_gemms.log" 2>/dev/null
    echo; cat "$logs"/kernels*.log 2>/dev/null | tr '\r' '\n' | grep -E " us \(|^== variant"
    ;;
  more)
    # Where `all` stopped, for a second call on the same warm machine.
    more_steps
    echo; tail -26 "$logs/fused_step_bench.log" 2>/dev/null; echo; tail -50 "$logs/hopper_evidence.log" 2>/dev/null
    echo; cat "$logs/profile_gemms.log" 2>/dev/null
    echo; cat "$logs"/kernels*.log 2>/dev/null | tr '\r' '\n' | grep -E " us \(|^== variant"
    ;;
  test)
    step tests 360 "$PY" -m pytest -v -rs -m cuda --durations=20 "${parallel[@]}"
    if command -v compute-sanitizer >/dev/null; then
      for tool in memcheck racecheck synccheck; do
        step "sanitize_$tool" 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" -m benchmarks.sanitize_kernels native
      done
    else
      echo "compute-sanitizer not found"; failed+=(sanitize)
    fi
    summarize_tests
    ;;
  report)
    step report 540 "$PY" -m benchmarks.report --device cuda --out "$out" --docs
    cp docs/PERFORMANCE.md "$out/" 2>/dev/null
    echo; grep -E "^\| (shape|[0-9])" "$out/report.md" | head -90
    echo; sed -n '/^### Trainers/,$p' "$out/report.md" | grep "^|"
    ;;
  tune)
    step hopper_evidence 150 env BUILD_LOG="$logs/build.log" bash benchmarks/hopper_evidence.sh "$logs/hopper"
    step sanitize_sm90 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TWOLAYER_OPS_SM90=1 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m tests.test_hopper "$logs/sanitize_sm90.json" tiles
    step fused_step_bench 150 "$PY" -m benchmarks.fused_step_bench
    step triton_tune 240 "$PY" -m benchmarks.triton_tune --out "$out" --budget-s 180
    echo; tail -50 "$logs/hopper_evidence.log"; echo; tail -26 "$logs/fused_step_bench.log"; echo; tail -30 "$logs/triton_tune.log"
    ;;
  *) echo "unknown stage $stage: all, test, report or tune"; exit 2 ;;
esac
finish
