"""Diagnostic: FP16 mode's eager path from M = 1024 on shapes the FP16 table lacks.

Why: ``tuning.merge_from`` is None for shapes outside the Gluon FP16 table, so from ``LARGE_M_THRESHOLD``
(1024) an eager FP16 call on them rebuilds the weight and runs cuBLAS, while on all eight tabled shapes the sweep
measured the Gluon kernel faster up to 4096. This times both on the Llama-3.1 layers split for
tensor_parallel_size=2 (none in the table), eager (host pick), each output checked against ``kernels.reference``.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-fp8-unseen-shapes/unseen_fp16.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from unittest import mock

import torch
import triton

from kernels import triton_dispatch
from kernels.bench import bench, make_weight, rel_err
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear

SHAPES = {
    "8B.qkv/2": (3072, 4096), "8B.o/2": (4096, 2048), "8B.gate_up/2": (14336, 4096), "8B.down/2": (4096, 7168),
    "70B.qkv/2": (5120, 8192), "70B.o/2": (8192, 4096), "70B.gate_up/2": (28672, 8192), "70B.down/2": (8192, 14336),
}
MS = (1024, 2048, 3072)


def main(out_path: str) -> None:
    torch.manual_seed(0)
    rows, t0 = [], time.time()
    mt = new_mode_tensor("cuda", "fp16")
    for name, (n, k) in SHAPES.items():
        nw = make_weight(n, k)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = nested_linear(x, nw, "fp16")
            row = dict(shape=name, n=n, k=k, m=m)
            for variant, start in (("merge_cublas", None), ("gluon", 4096)):
                with mock.patch.object(triton_dispatch, "merge_from", lambda n_, k_, s=start: s):
                    op = lambda: triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mt, nw.scale_exp)  # noqa: E731
                    row[f"{variant}_path"] = "cublas" if triton_dispatch.fp16_on_cublas(x, nw.upper, nw.lower) else "gluon"
                    y = op()
                    torch.cuda.synchronize()
                    row[f"{variant}_err"] = err = rel_err(y, ref)
                    if err > 5e-3:
                        raise SystemExit(f"{name} M={m} {variant}: rel err {err:.2e}")
                    row[f"{variant}_us"] = bench(op)
            print(json.dumps({k_: (round(v, 2) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
            rows.append(row)
    with open(out_path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                       date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), elapsed_s=round(time.time() - t0, 1),
                       rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
