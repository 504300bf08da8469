"""Diagnostic: does the Gluon FP8 GEMM at M = 128..512 run faster with two CTAs per SM?

Why: at M = 256 the FP8 GEMM's table tiles give 8B.qkv 96 programs on 132 SMs, one per SM (their rings fill
shared memory and the kernel is compiled at 168-255 registers a thread), and the op ran at 1.05-1.70 of cuBLAS
FP16 in CUDA graphs (Kernels v17), far from the tensor cores' 2x. Tiles with a ring of at most ~100 KB, compiled
with ``maxnreg`` low enough that two CTAs fit an SM's 64K registers (128 for the 64-row tiles, whose launch
is 8 warps: 4 consumers and the TMA warp, rounded up to whole warpgroups; the 128-row tiles' 12 warps would need
85, and ptxas needs 90), let 192 programs of 128-token tiles run at
once. This times, in CUDA graphs (``gluon_check.bench_us``), the GEMM alone on codes quantized beforehand (how vLLM
calls it after the mode-aware norm / SiLU kernels), for the table's config and for candidate (tile, maxnreg) pairs,
each checked against the fp32 product of the same codes first (output poisoned with NaN).

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-fp8-two-ctas/two_ctas.py OUT.json [--ms 128,256,512]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton

from kernels import gluon_fp8
from kernels.gluon_check import bench_us
from kernels.nested_format import nested_split
from kernels.reference import quantize_per_token
from kernels.tuning import LLAMA_SHAPES, gluon_fp8_config

# (block_w, block_t, block_k, stages, maxnreg or 0 for the compiler's own)
CANDIDATES = {
    128: [(64, 64, 256, 4, 0), (64, 64, 256, 4, 128), (64, 128, 128, 4, 0), (64, 128, 128, 4, 128),
          (64, 128, 128, 4, 200), (128, 64, 128, 6, 0), (128, 128, 128, 3, 104)],
    256: [(64, 128, 128, 4, 0), (64, 128, 128, 4, 128), (64, 128, 128, 4, 200), (64, 128, 128, 3, 128),
          (128, 128, 128, 3, 0), (128, 128, 128, 3, 104), (128, 128, 64, 6, 104), (64, 256, 128, 2, 128),
          (128, 256, 128, 4, 0)],
    512: [(128, 256, 128, 4, 0), (128, 128, 128, 3, 104), (64, 128, 128, 4, 128), (128, 128, 128, 6, 0)],
}


def resident(ck) -> dict:
    """How many CTAs of the compiled kernel ``ck`` an SM holds at once (the driver's occupancy query, at the
    block size and dynamic shared memory Triton launches it with), and its registers a thread."""
    import ctypes

    threads = ck.metadata.num_warps * 32
    n = ctypes.c_int()
    rc = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveBlocksPerMultiprocessor(
        ctypes.byref(n), ctypes.c_void_p(ck.function), ctypes.c_int(threads), ctypes.c_size_t(ck.metadata.shared))
    return dict(ctas_per_sm=n.value if rc == 0 else f"error {rc}", regs=ck.n_regs, threads=threads,
                shared=ck.metadata.shared)


def launcher(xq, xs, upper, mode, out, cfg):
    """A plain Triton launch of the FP8 kernel (no PDL, no split-K) with ``maxnreg`` if given."""
    bw, bt, bk, st, reg = cfg
    grid, args, consts, warps, stages, _spec, _pdl = gluon_fp8.gemm_launch(xq, xs, upper, mode, 0, None, out,
                                                                          (bw, bt, bk, st), 1, False)
    call = tuple(a.descriptor() if hasattr(a, "descriptor") else a for a in args)
    opts = dict(maxnreg=reg) if reg else {}

    def run():
        return gluon_fp8.nested_fp8_rs_kernel[(grid,)](*call, **consts, num_warps=warps, num_stages=stages, **opts)
    return run, grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ms", default="128,256,512")
    ap.add_argument("--rep-ms", type=int, default=25)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    mode = torch.ones(1, dtype=torch.int32, device=dev)
    rows = []
    t0 = time.time()
    for name, (n, k) in LLAMA_SHAPES.items():
        w = (torch.randn(n, k, device=dev) * 0.02).half()
        nw = nested_split(w)
        del w
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, k, device=dev).half()
            xq, xs = quantize_per_token(x)
            xs = xs.reshape(-1).float().contiguous()
            ref = (xq.float() @ nw.upper.float().t()) * (xs.view(-1, 1) * nw.fp8_weight_scale)
            wt = torch.empty((n, k), device=dev, dtype=torch.float16)
            cublas = bench_us(lambda: torch.matmul(x, wt.t()), a.rep_ms)
            table = gluon_fp8_config(n, k, m)
            cands = list(CANDIDATES.get(m, []))
            if table is not None:
                cands.insert(0, (*table[:4], 0))
            row = dict(shape=name, n=n, k=k, m=m, cublas_fp16_us=cublas, table=list(table) if table else None,
                       configs=[])
            for cfg in cands:
                e = dict(cfg=list(cfg))
                try:
                    out = torch.full((m, n), float("nan"), device=dev, dtype=torch.float16)
                    run, grid = launcher(xq, xs, nw.upper, mode, out, cfg)
                    ck = run()
                    torch.cuda.synchronize()
                    e.update(resident(ck))
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    e.update(grid=grid, rel_err=err)
                    if err < 5e-3:
                        e["us"] = bench_us(run, a.rep_ms)
                        e["ratio"] = cublas / e["us"]
                except Exception as ex:  # noqa: BLE001 - recorded; the other configs still run
                    e["error"] = f"{type(ex).__name__}: {str(ex)[:300]}"
                row["configs"].append(e)
                print(name, m, e, flush=True)
            rows.append(row)
            with open(a.out, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                               triton=triton.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               elapsed_s=round(time.time() - t0, 1), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
