"""Diagnostic: does the Gluon FP16 kernel's time per program grow with the number of programs at M = 256?

One fixed tile, (64, 256, 64, 5), K = 4096, M = 256, and N chosen so that the grid has 12 ... 132 programs
(one per SM at most, so the programs run in one wave). If each program's time stays flat as the grid grows,
a program's speed is set by its own latency; if it grows, by something the programs share (L2, HBM). Also
cuBLAS FP16 on the same shapes, and the tile (128, 256, 64, 4) at the same N (half the programs).

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-deep-rings/grid_scaling.py $OUT/grid_scaling.json
"""

import json
import sys

import torch

from kernels import gluon_fp16, nested_merge
from kernels.bench import make_weight, rel_err
from kernels.gluon_check import bench_us
from kernels.ops import new_mode_tensor


def main(out_path: str) -> None:
    k, m = 4096, 256
    mode = new_mode_tensor("cuda", "fp16")
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    rows = []
    for programs in (12, 24, 48, 72, 96, 120, 132):
        n = 64 * programs
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        row = dict(programs=programs, n=n, k=k, m=m)
        for tile in ((64, 256, 64, 5), (128, 256, 64, 4)):
            run = lambda: gluon_fp16.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, None, out, tile)  # noqa: E731
            out.fill_(float("nan"))
            run()
            err = rel_err(out, x @ w16.t())
            assert err < 5e-3, (tile, n, err)
            row["x".join(map(str, tile))] = bench_us(run, 20)
        row["cublas"] = bench_us(lambda: torch.matmul(x, w16.t()), 20)
        row["bytes_per_us_64x256"] = (n * k * 2 + programs * m * k * 2) / row["64x256x64x5"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
