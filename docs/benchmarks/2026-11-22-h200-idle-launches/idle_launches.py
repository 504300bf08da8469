"""Diagnostic: what the device-picked op's idle launches cost in CUDA graphs, at decode M.

In a graph the op holds both modes' launches and the idle ones exit (``kernels.triton_dispatch``): three
as of 5f6dde5 (the Gluon FP16 GEMM, ``act_quant``, the Gluon FP8 GEMM, the last two programmatic
dependents, PDL), or, where the two configs pair, two (``act_quant``, then ``kernels.gluon_dual``'s kernel).
This times, as CUDA-graph replays (``gluon_check.bench_us``), the op in each mode against the launches that
do that mode's work alone, so the difference is what the idle launches cost:

- ``op16`` / ``op8``: the op, device pick, as vLLM's graphs run it; ``op16_3`` / ``op8_3``: the same with
  ``triton_dispatch.USE_DUAL`` off (three launches); ``dual``: whether the op paired the configs.
- ``g16``: the FP16 GEMM alone (mode 0).
- ``pair8``: ``act_quant`` then the FP8 GEMM as its PDL dependent (mode 1): FP8 mode's work.
- ``g8``: the FP8 GEMM alone on codes quantized beforehand.
- ``idle16``: the FP16 launch alone in mode 1 (it exits); ``idle8``: ``act_quant`` + the FP8 GEMM in mode 0.
- ``q0_g16``: ``act_quant`` in mode 0 (it exits), then the FP16 GEMM: what FP16 mode costs with the
  quantization launched first and the two GEMMs in one launch.

Every variant's output is checked against ``kernels.reference.nested_linear`` (poisoned with NaN first).

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-22-h200-idle-launches/idle_launches.py $OUT/idle.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from unittest import mock

import torch

from kernels import gluon_dual, gluon_fp8, gluon_fp16, nested_linear, nested_merge, triton_dispatch
from kernels.bench import make_weight, rel_err
from kernels.gluon_check import bench_us
from kernels.ops import new_mode_tensor
from kernels.triton_dispatch import nested_linear_picked, use_gluon, use_gluon_fp8
from kernels.triton_fp8 import act_quant
from kernels.tuning import LLAMA_SHAPES

MS = (1, 16, 64, 128, 256)
REP_MS = 40
TOL = {"fp16": 5e-3, "fp8": 5e-2}


def time_case(name: str, nw, w16: torch.Tensor, m: int, m16: torch.Tensor, m8: torch.Tensor) -> dict:
    """One (shape, M): every variant checked, then timed; a variant that fails its check is not timed."""
    n, k = nw.upper.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    ref = {md: nested_linear(x, nw, md) for md in ("fp16", "fp8")}
    out = torch.empty(m, n, device="cuda", dtype=torch.float16)
    q = (torch.empty(m, k, device="cuda", dtype=torch.float8_e4m3fn), torch.empty(m, device="cuda", dtype=torch.float32))
    tile, g8 = use_gluon(x, nw.upper, nw.lower), use_gluon_fp8(x, nw.upper)
    r = {"shape": name, "n": n, "k": k, "m": m, "tile16": tile, "cfg8": g8}

    def fp16(mode):
        return gluon_fp16.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, 0, None, out, tile, True)

    def fp8(mode, pdl):
        return gluon_fp8.nested_fp8_gemm_rs(q[0], q[1], nw.upper, mode, 0, None, out, g8[:4], True, split_k=g8[4],
                                            pdl=pdl)

    def op(mode, dual=True):
        with mock.patch.object(triton_dispatch, "USE_DUAL", dual and triton_dispatch.USE_DUAL):
            return out.copy_(nested_linear_picked(x, nw.upper, nw.lower, mode, 0, None, False))

    variants = {"cublas": (None, lambda: torch.matmul(x, w16.t())),
                "op16": ("fp16", lambda: op(m16)), "op8": ("fp8", lambda: op(m8)),
                "op16_3": ("fp16", lambda: op(m16, False)), "op8_3": ("fp8", lambda: op(m8, False))}
    r["dual"] = triton_dispatch.USE_DUAL and gluon_dual.pairable(tile, g8, m)
    if tile:
        variants["g16"] = ("fp16", lambda: fp16(m16))
        variants["idle16"] = (None, lambda: fp16(m8))
        variants["q0_g16"] = ("fp16", lambda: (act_quant(x, m16, q), fp16(m16)))
    if g8:
        variants["pair8"] = ("fp8", lambda: (act_quant(x, m8, q), fp8(m8, True)))
        variants["g8"] = ("fp8", lambda: fp8(m8, False))
        variants["idle8"] = (None, lambda: (act_quant(x, m16, q), fp8(m16, True)))
    for key, (md, fn) in variants.items():
        if key == "g8":
            act_quant(x, m8, q)  # g8 times the GEMM alone: its codes come from here
        if md is not None:
            out.fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            r[f"{key}_err"] = rel_err(out, ref[md])
            if not r[f"{key}_err"] < TOL[md]:
                r[f"{key}_us"] = None
                print(f"{name} M={m} {key}: FAILED check, err {r[f'{key}_err']:.2e}", flush=True)
                continue
        r[f"{key}_us"] = bench_us(fn, REP_MS)
    return r


def main(out_path: str) -> None:
    t0 = time.time()
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        m16, m8 = new_mode_tensor("cuda", "fp16"), new_mode_tensor("cuda", "fp8")
        for m in MS:
            r = time_case(name, nw, w16, m, m16, m8)
            rows.append(r)
            print(f"{name:12s} M={m:4d} " + " ".join(f"{kk[:-3]} {v:6.1f}" for kk, v in r.items()
                                                     if kk.endswith("_us") and v is not None), flush=True)
    summary = {}
    for key in ("op16", "op16_3", "g16", "q0_g16", "op8", "op8_3", "pair8", "g8", "idle16", "idle8"):
        for m in MS:
            rs = [r for r in rows if r["m"] == m and r.get(f"{key}_us") and r.get("cublas_us")]
            if rs:
                summary[f"{key}_m{m}"] = math.exp(sum(math.log(r["cublas_us"] / r[f"{key}_us"]) for r in rs)
                                                  / len(rs))
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv), "rep_ms": REP_MS,
            "elapsed_s": round(time.time() - t0, 1)}
    with open(out_path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "geomean_vs_cublas": summary}, f, indent=1)
    for kk, v in summary.items():
        print(f"{kk:12s} x{v:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
