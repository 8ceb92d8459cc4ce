#!/usr/bin/env bash
# Builds WGMMA GEMM variants (kernels/fp8_gemm.cu tuning knobs) side by side, checks each with the
# gemm_wgmma test group, and times each on the shapes given. Logs under $OUT.
#   tools/gpu_tune_gemm.sh "5:0 6:0 5:8 5:16:1" 7168x16384 36864x7168
#   (STAGES:RASTER[:MULTICAST] variants, then N×K shapes)
set -u
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
variants=$1; shift
shapes=("$@")
. "$(dirname "$0")/gpu_nccl.sh"
for v in $variants; do
  IFS=: read -r st ra mc <<< "$v"; mc=${mc:-0}; b=build/tune-s$st-r$ra-m$mc
  make -j"$(nproc)" "${nccl_args[@]}" BUILD=$b NVCC_EXTRA="-DDSV3_WG_STAGES=$st -DDSV3_WG_RASTER=$ra -DDSV3_WG_MULTICAST=$mc" \
    $b/tests/test_gpu_kernels $b/bench/bench_gpu_kernels > "$OUT/build-$st-$ra-$mc.log" 2>&1 || { echo "$v: build failed"; tail -5 "$OUT/build-$st-$ra-$mc.log"; continue; }
  $b/tests/test_gpu_kernels --group gemm_wgmma > "$OUT/test-$st-$ra-$mc.log" 2>&1
  echo "variant stages=$st raster=$ra multicast=$mc: $(tail -1 "$OUT/test-$st-$ra-$mc.log")"
  for sh in "${shapes[@]}"; do
    $b/bench/bench_gpu_kernels --only gemm --shape "$sh" --m 4096 > "$OUT/bench-$st-$ra-$mc-$sh.log" 2>&1
    grep '^RESULT' "$OUT/bench-$st-$ra-$mc-$sh.log" | grep -E 'dsv3_wgmma|cublaslt_fp8' | sed "s/^RESULT/  s$st r$ra m$mc/" | cut -c1-150
  done
done
