#!/usr/bin/env bash
# One device call of a GPU session (docs/kernels.md, "GPU session: what to run").
#   tools/gpu_session.sh test    environment, build, SASS check, every test group (each its own process)
#   tools/gpu_session.sh bench   C benchmark (our kernels, cuBLASLt peers), then the PyTorch peers
#   tools/gpu_session.sh sanitize compute-sanitizer memcheck + racecheck over the quick test
#   tools/gpu_session.sh ncu     Nsight Compute sections of the GEMM, grouped GEMM, cuBLASLt FP8 and MLA decode kernels
#   tools/gpu_session.sh mla     MLA decode only (issue 23): its test group, memcheck of it, its benchmark with the
#                                split sweep, one Nsight Compute profile of mla_decode_kernel at B = 64, S = 8192
#   tools/gpu_session.sh gemm    issue 22 in one call (< 10 min): build without and with GEMM_PERSISTENT=1, the WGMMA
#                                GEMM tests of both (+ moe for the persistent one), the GEMM benchmarks of both
#                                (ratios vs cuBLASLt) and one ncu profile of the persistent kernel
#   tools/gpu_session.sh model   the whole model: dsv3 --backend fast vs the reference, end-to-end benchmark vs peers
#                                (carry build/debs, made by `make gpu-debs`)
# Logs go to $OUT (the device tool brings them back), or to build/gpu-session/ elsewhere.
# Also runs by hand on any CUDA machine.
set -u
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
JOBS=$(nproc)

. "$(dirname "$0")/gpu_nccl.sh"

build() {
  make -j"$JOBS" "${nccl_args[@]}" build/tests/test_gpu_kernels build/bench/bench_gpu_kernels 2>&1 | tail -5
  make -j"$JOBS" "${nccl_args[@]}" build/tests/test_gpu_ep_nccl 2>&1 | tail -3
}

case "${1:-test}" in
test)
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version | tail -1; command -v compute-sanitizer cuobjdump; nproc; } 2>&1
  t0=$(date +%s); build; echo "build: $(( $(date +%s) - t0 )) s"
  cuobjdump -sass build/libdsv3fast.a > "$OUT/sass.txt" 2>&1
  echo "SASS: QGMMA $(grep -c QGMMA "$OUT/sass.txt"), HGMMA $(grep -c HGMMA "$OUT/sass.txt"), HMMA $(grep -c HMMA "$OUT/sass.txt"), LDL/STL $(grep -cE 'LDL|STL' "$OUT/sass.txt")"
  gzip -f "$OUT/sass.txt"
  for g in ops act_quant gemm_mma mla moe generic gemm_wgmma; do
    echo "=== $g"
    timeout 150 build/tests/test_gpu_kernels --group "$g" > "$OUT/test-$g.log" 2>&1; echo "exit $?" >> "$OUT/test-$g.log"
    grep -E 'FAIL|fail|error|passed|exit' "$OUT/test-$g.log" | tail -12
  done
  echo "=== ep_nccl"
  if [ -x build/tests/test_gpu_ep_nccl ]; then timeout 120 build/tests/test_gpu_ep_nccl 2>&1 | tail -8; fi
  ;;
bench)
  build >/dev/null
  timeout "${BENCH_TIMEOUT:-400}" build/bench/bench_gpu_kernels ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1; echo "bench exit $?"
  grep -v '^RESULT' "$OUT/bench.log" | tail -120
  if [ "${PEERS:-1}" = 1 ]; then
    PYTHONUNBUFFERED=1 timeout 200 python3 tools/bench_peers.py > "$OUT/peers.log" 2>&1; echo "peers exit $?"
    grep -v '^RESULT' "$OUT/peers.log" | tail -40
  fi
  ;;
sanitize)
  build >/dev/null
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    echo "=== $tool"
    timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 99 build/tests/test_gpu_kernels --quick ${SANITIZE_ARGS:-} \
      > "$OUT/sanitize-$tool.log" 2>&1; echo "exit $?"
    grep -E 'ERROR|Error|error|SUMMARY|passed' "$OUT/sanitize-$tool.log" | tail -10
  done
  ;;
ncu)
  # Nsight Compute on the kernels that miss their targets (clocks left as found: --clock-control none).
  build >/dev/null
  sec="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
  prof() { # name, kernel regex, bench args
    local name=$1 kre=$2; shift 2
    timeout 150 ncu --clock-control none --kernel-name "regex:$kre" --launch-skip 2 --launch-count 1 $sec \
      build/bench/bench_gpu_kernels "$@" > "$OUT/ncu-$name.txt" 2>&1; echo "ncu $name exit $?"
    grep -E 'Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Executed Ipc A|Shared Memory Configuration Size|One or More Eligible|Issued Warp|No Eligible|Stall' "$OUT/ncu-$name.txt" | head -24
  }
  prof gemm_wgmma 'fp8_gemm_wgmma' --only gemm --shape 7168x16384 --m 4096
  prof gemm_cublaslt '^[^fd]' --only gemm --shape 7168x16384 --m 4096 --impl cublaslt-fp8
  prof grouped 'fp8_gemm_wgmma' --only grouped
  prof mla 'mla_decode_kernel' --only mla --mla 64x8192
  ;;
mla)
  # One call of at most ~5 minutes for the MLA decode work: tests, sanitizer, benchmark, one profile.
  t0=$(date +%s); build >/dev/null; echo "build: $(( $(date +%s) - t0 )) s"
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>&1
  timeout 150 build/tests/test_gpu_kernels --group mla > "$OUT/test-mla.log" 2>&1; echo "exit $?" >> "$OUT/test-mla.log"
  grep -E 'FAIL|fail|error|passed|exit' "$OUT/test-mla.log" | tail -12
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 99 build/tests/test_gpu_kernels --quick --group mla \
    > "$OUT/sanitize-mla.log" 2>&1; echo "memcheck exit $?"
  grep -E 'ERROR|SUMMARY|passed' "$OUT/sanitize-mla.log" | tail -6
  timeout 150 build/bench/bench_gpu_kernels --only mla --mla-sweep > "$OUT/bench-mla.log" 2>&1; echo "bench exit $?"
  grep -v '^RESULT' "$OUT/bench-mla.log" | tail -40
  sec="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
  timeout 150 ncu --clock-control none --kernel-name "regex:mla_decode_kernel" --launch-skip 2 --launch-count 1 $sec \
    build/bench/bench_gpu_kernels --only mla --mla 64x8192 > "$OUT/ncu-mla.txt" 2>&1; echo "ncu mla exit $?"
  grep -E 'Duration|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issued Warp|No Eligible|Stall' "$OUT/ncu-mla.txt" | head -16
  ;;
gemm)
  # Every step's timeout is cut to what is left of GEMM_SESSION_S (default 560 s), so the call
  # ends in time even when a step hangs; a skipped step says so.
  t_end=$(( $(date +%s) + ${GEMM_SESSION_S:-560} ))
  left() { local l=$(( t_end - $(date +%s) )); [ "$l" -gt "$1" ] && l=$1; echo $(( l > 0 ? l : 0 )); }
  step() { # name, cap in s, log file, command...
    local name=$1 cap log=$3; cap=$(left "$2"); shift 3
    if [ "$cap" -lt 5 ]; then echo "=== $name: skipped (session time spent)"; return 1; fi
    echo "=== $name (timeout $cap s)"; timeout "$cap" "$@" > "$log" 2>&1; local rc=$?
    echo "exit $rc" >> "$log"; echo "$name: exit $rc"; return $rc
  }
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  for v in 0 1; do
    t0=$(date +%s)
    step "build GEMM_PERSISTENT=$v" 240 "$OUT/gemm-build-$v.log" make -j"$JOBS" GEMM_PERSISTENT=$v build/tests/test_gpu_kernels build/bench/bench_gpu_kernels
    tail -3 "$OUT/gemm-build-$v.log"; echo "build: $(( $(date +%s) - t0 )) s"
    mkdir -p "build/gemm-$v" && cp build/tests/test_gpu_kernels build/bench/bench_gpu_kernels "build/gemm-$v/"
    cp build/gpu/obj/kernels/fp8_gemm.o.ptxas.txt "$OUT/gemm-ptxas-$v.txt" 2>/dev/null
  done
  cuobjdump -sass build/gemm-1/test_gpu_kernels 2>/dev/null | awk '/Function :/{f=/persistent/} f' > "$OUT/gemm-sass-persistent.txt"
  echo "persistent SASS: QGMMA $(grep -c QGMMA "$OUT/gemm-sass-persistent.txt"), LDL/STL $(grep -cE 'LDL|STL' "$OUT/gemm-sass-persistent.txt")"
  for v in 1 0; do # the new kernel first: its results matter most if time runs out
    step "test gemm_wgmma GEMM_PERSISTENT=$v" 120 "$OUT/gemm-test-wgmma-$v.log" "build/gemm-$v/test_gpu_kernels" --group gemm_wgmma
    grep -E 'FAIL|fail|error|passed' "$OUT/gemm-test-wgmma-$v.log" | tail -12
  done
  step "test moe GEMM_PERSISTENT=1" 60 "$OUT/gemm-test-moe-1.log" build/gemm-1/test_gpu_kernels --group moe
  grep -E 'FAIL|fail|error|passed' "$OUT/gemm-test-moe-1.log" | tail -8
  for v in 1 0; do
    step "bench GEMM_PERSISTENT=$v" 110 "$OUT/gemm-bench-$v.log" "build/gemm-$v/bench_gpu_kernels" --only gemm --only grouped
    grep -v '^RESULT' "$OUT/gemm-bench-$v.log" | tail -60
  done
  sec="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
  step "ncu persistent" 90 "$OUT/gemm-ncu-persistent.txt" ncu --clock-control none --kernel-name regex:fp8_gemm_wgmma_persistent --launch-skip 2 --launch-count 1 $sec \
    build/gemm-1/bench_gpu_kernels --only gemm --shape 7168x16384 --m 4096
  grep -E 'Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Grid Size|Cluster Size|No Eligible|Stall' \
    "$OUT/gemm-ncu-persistent.txt" | head -20
  ;;
model)
  # The whole model on the GPU: needs the Debian libraries the CLI uses, carried as .deb files
  # (make gpu-debs here, then carry build/debs) and unpacked outside / (dpkg -x).
  if ! ls build/debs/*.deb >/dev/null 2>&1; then echo "model: carry build/debs (make gpu-debs) for cJSON/PCRE2/Oniguruma"; exit 2; fi
  mkdir -p /tmp/debroot
  for f in build/debs/*.deb; do  # dpkg -x, or by hand where there is no dpkg
    if command -v dpkg >/dev/null; then dpkg -x "$f" /tmp/debroot
    else d=$(ar t "$f" | grep '^data.tar'); ar p "$f" "$d" | tar -x -C /tmp/debroot $(case $d in *.xz) echo -J;; *.zst) echo --zstd;; esac); fi
  done
  deb=(DEB_ROOT=/tmp/debroot)
  t0=$(date +%s)
  make -j"$JOBS" "${deb[@]}" "${nccl_args[@]}" build/dsv3 build/tests/test_fast_model build/bench/bench_fast_model 2>&1 | grep -E "error|LINK" | tail -8
  echo "build: $(( $(date +%s) - t0 )) s"
  timeout 240 build/tests/test_fast_model --cli build/dsv3 > "$OUT/test-fast-model.log" 2>&1; echo "exit $?" >> "$OUT/test-fast-model.log"
  grep -E 'FAIL|passed|exit|SKIP' "$OUT/test-fast-model.log" | tail -20
  # one call must stay under 10 minutes: build ~1 min, test < 1, the 17 GB checkpoint ~2, ours ~1, peers ≤ 4
  t0=$(date +%s)
  timeout 200 make "${deb[@]}" build/bench-model-"${BENCH_LAYERS:-4}"l/config.json BENCH_LAYERS="${BENCH_LAYERS:-4}" 2>&1 | tail -2
  echo "checkpoint: $(( $(date +%s) - t0 )) s"
  PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-360}" make "${deb[@]}" "${nccl_args[@]}" bench-gpu-model BENCH_LAYERS="${BENCH_LAYERS:-4}" \
    PEER_TIME_BUDGET="${PEER_TIME_BUDGET:-240}" > "$OUT/bench-model.log" 2>&1; echo "bench-gpu-model exit $?"
  grep -E 'RESULT|REFUSED|SKIPPED|CHECK|batch' "$OUT/bench-model.log" | tail -30
  ;;
*) echo "usage: $0 test|bench|sanitize|ncu|mla|gemm|model"; exit 2 ;;
esac
