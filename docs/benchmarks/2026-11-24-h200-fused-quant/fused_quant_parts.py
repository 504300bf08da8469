"""Diagnostic: what each part of the quantizing Gluon FP8 GEMM costs (CUDA-graph replays on an H200).

QUANT_PARTS=3: the scale pass and the per-step conversion; 1: the scale pass only; 2: the conversion only (scales
1); 0: neither (the MMA reads code tiles nobody wrote: a timing, not a result). Needs the kernel of
``fused_quant_parts.patch`` (3c250f8 plus the switch):

    git apply docs/benchmarks/2026-11-24-h200-fused-quant/fused_quant_parts.patch
    for p in 3 1 2 0; do QUANT_PARTS=$p PYTHONPATH=$PWD python3 \
        docs/benchmarks/2026-11-24-h200-fused-quant/fused_quant_parts.py $OUT/parts_$p.json; done
"""
import json
import sys

import torch

from kernels import gluon_fp8 as G
from kernels.bench import make_weight
from kernels.gluon_check import bench_us
from kernels.ops import new_mode_tensor
from kernels.triton_fp8 import act_quant
from kernels.tuning import LLAMA_SHAPES
mode = new_mode_tensor("cuda", "fp8")
cfgs = {1: (64, 16, 128, 10), 16: (64, 16, 128, 10), 64: (64, 64, 128, 6)}
rows = []
for name in ("8B.qkv", "8B.o", "8B.down", "70B.down"):
    n, k = LLAMA_SHAPES[name]
    nw = make_weight(n, k)
    for m in (1, 16, 64):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        c = cfgs[m]
        us = bench_us(lambda: G.nested_fp8_gemm_rs(x, None, nw.upper, mode, nw.scale_exp, None, out, c), 20)
        xq, xs = act_quant(x, mode)
        given = bench_us(lambda: G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, None, out, c), 20)
        rows.append(dict(shape=name, m=m, cfg=c, parts=G.QUANT_PARTS, fused_us=us, given_same_tile_us=given))
        print(name, m, c, "parts", G.QUANT_PARTS, f"fused {us:.1f} given(same tile) {given:.1f}", flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
