#!/usr/bin/env bash
# Nsight Compute on 8B.qkv at M = 256: the shipped kernel, no_x_tma, no_plane_tma, then cuBLAS (step_anatomy.py --ncu).
# Run on the H200 from the repository root with OUT set: bash docs/benchmarks/2026-11-24-h200-step-anatomy/ncu.sh
export PYTHONPATH=$PWD
S=docs/benchmarks/2026-11-24-h200-step-anatomy/step_anatomy.py
NCU=$(which ncu || ls /usr/local/cuda*/bin/ncu | head -1)
SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables"
SEC="$SEC --section WarpStateStats --section SchedulerStats --section LaunchStats"
if [ -z "${1:-}" ]; then
for v in base no_x_tma no_plane_tma; do
  $NCU --kernel-name regex:nested_fp16_rs_kernel --launch-skip 2 --launch-count 1 $SEC \
    python3 $S --ncu $v 6144 4096 256 64,256,64,5 > $OUT/ncu_${v}_8B.qkv_M256.txt 2>&1
  tail -3 $OUT/ncu_${v}_8B.qkv_M256.txt
done
$NCU --kernel-name regex:"nvjet|gemm|sm90|cutlass" --launch-skip 2 --launch-count 1 $SEC \
  python3 $S --ncu base 6144 4096 256 64,256,64,5 > $OUT/ncu_cublas_8B.qkv_M256.txt 2>&1
grep -h "Duration\|DRAM Throughput\|L2 Hit Rate\|Memory Throughput\|L1/TEX Hit\|Mem Busy\|Max Bandwidth" $OUT/ncu_*.txt | head -60
fi
# Second call (bash ncu.sh prefetch): the same at the GPU's own clocks (ncu otherwise locks them near 1.3 GHz),
# with the prefetch variants: do they raise the planes' L2 hit rate?
if [ "${1:-}" = prefetch ]; then
  for v in base no_plane_tma no_x_tma l2_prefetch_8 blocked_planes blocked_prefetch_8; do
    $NCU --clock-control none --kernel-name regex:nested_fp16_rs_kernel --launch-skip 2 --launch-count 1 $SEC \
      python3 $S --ncu $v 6144 4096 256 64,256,64,5 > $OUT/ncu_${v}_8B.qkv_M256_fullclock.txt 2>&1
  done
  grep -H "SM Frequency\|Duration\|DRAM Throughput\|L2 Hit Rate" $OUT/ncu_*.txt
fi
# Third call (bash ncu.sh cublas): cuBLAS at the GPU's own clocks on 8B.qkv, and 70B.qkv at M = 256 (128-row tile).
if [ "${1:-}" = cublas ]; then
  $NCU --clock-control none --kernel-name regex:"nvjet|gemm|sm90|cutlass" --launch-skip 2 --launch-count 1 $SEC \
    python3 $S --ncu base 6144 4096 256 64,256,64,5 > $OUT/ncu_cublas_8B.qkv_M256_fullclock.txt 2>&1
  for v in base no_plane_reads no_plane_tma no_x_tma; do
    $NCU --clock-control none --kernel-name regex:nested_fp16_rs_kernel --launch-skip 2 --launch-count 1 $SEC \
      python3 $S --ncu $v 10240 8192 256 128,256,64,4 > $OUT/ncu_${v}_70B.qkv_M256_fullclock.txt 2>&1
  done
  $NCU --clock-control none --kernel-name regex:"nvjet|gemm|sm90|cutlass" --launch-skip 2 --launch-count 1 $SEC \
    python3 $S --ncu base 10240 8192 256 128,256,64,4 > $OUT/ncu_cublas_70B.qkv_M256_fullclock.txt 2>&1
  grep -H "SM Frequency\|Duration\|DRAM Throughput\|L2 Hit Rate" $OUT/ncu_*.txt
fi
