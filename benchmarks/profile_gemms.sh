#!/usr/bin/env bash
# Nsight Compute profiles of one launch each, ours next to cuBLAS's, for the GEMMs that miss issue 6's
# targets: the sm90 bf16 forward at 8192x4096 -> 4096 (without and with two-block clusters, whose B
# multicast should show as less L2 traffic) and the portable float32 forward at 4096^3.
#   bash benchmarks/profile_gemms.sh OUT_DIR
# Sections: speed of light, compute and memory workload, occupancy, warp stall reasons. Writes one
# text report per kernel to OUT_DIR (ncu_*.txt); exits 0 with a note where ncu is not installed.
set -uo pipefail
out=${1:?usage: profile_gemms.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[[ -n $ncu ]] || { echo "ncu not found: no profiles"; exit 0; }

target=$(mktemp --suffix=.py)
cat >"$target" <<'EOF'
import sys
import torch
from twolayer_ops import linear_relu
M, K, N, dt = (8192, 4096, 4096, torch.bfloat16) if sys.argv[1].startswith("bf16") else (4096, 4096, 4096, torch.float32)
if sys.argv[1] == "bf16_cluster":
    torch.ops.twolayer_ops_sm90.set_cluster(2)
x = torch.randn(M, K, device="cuda", dtype=dt)
w = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5
b = torch.randn(N, device="cuda", dtype=dt)
with torch.no_grad():
    for _ in range(2):  # the first launch of each kernel warms up; ncu profiles the second
        linear_relu(x, w, b, backend="native")
        torch.mm(x, w.t())
torch.cuda.synchronize()
EOF

status=0
profile() {  # profile NAME CASE KERNEL_REGEX
  echo "== $1: $3 ($2)"
  "$ncu" --clock-control none -k "regex:$3" --launch-skip 1 --launch-count 1 --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
    --section WarpStateStats "$PY" "$target" "$2" >"$out/ncu_$1.txt" 2>&1 || status=1
  grep -E "^  [a-z_0-9]+.*\(|Duration|Compute \\(SM\\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|No kernels" \
    "$out/ncu_$1.txt" | head -12
}
profile sm90_bf16 bf16 '^sm90_gemm_kernel'
profile sm90_bf16_cluster bf16_cluster '^sm90_gemm_kernel'
profile cublas_bf16 bf16 'nvjet|xmma|cutlass'
profile simt_fp32 fp32 '^gemm_kernel'
profile cublas_fp32 fp32 'sgemm|nvjet|xmma|cutlass'
rm -f "$target"
exit $status
