export PYTHONPATH=$PWD
S=docs/benchmarks/2026-11-24-h200-k-interleave/ki_stress.py
for m in 256 64; do for t in 64,16,128,5 64,64,128,5 64,64,128,7 64,128,64,9 64,128,128,4 64,256,64,5 64,16,128,5,2 64,64,128,5,2 64,128,128,4,2; do
  timeout 60 python3 $S 768 4096 $m $t 300 2>&1 | grep -v CUDAEvent | tail -2
done; done
