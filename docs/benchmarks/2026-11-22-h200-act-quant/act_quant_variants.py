"""act_quant variants against the committed kernel on the H200 (a diagnostic, not part of the product).

Run from the repo root: PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-22-h200-act-quant/act_quant_variants.py OUT.json
Variants: rows per program (ROWS), warps, exact division (div_rn) or the GEMM's fused-quant division
(div_by_scale), evict-first loads of x. Each is checked code for code against quantize_per_token.
"""
import json
import sys

import torch
import triton
import triton.language as tl

from kernels.bench import bench
from kernels.ops import new_mode_tensor
from kernels.reference import quantize_per_token
from kernels.triton_fp8 import FP8_MAX, act_quant, act_scale, div_by_scale, to_e4m3


@triton.jit
def aq_rows(x_ptr, q_ptr, s_ptr, mode_ptr, M, K, stride_xm, QBLOCK: tl.constexpr, ROWS: tl.constexpr,
            FAST_DIV: tl.constexpr, EVICT: tl.constexpr):
    if tl.load(mode_ptr) != 1:
        return
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, QBLOCK)
    r64 = rows.to(tl.int64)
    ok = (rows[:, None] < M) & (offs[None, :] < K)
    if EVICT:
        xk = tl.load(x_ptr + r64[:, None] * stride_xm + offs[None, :], mask=ok, other=0.0,
                     eviction_policy="evict_first").to(tl.float32)
    else:
        xk = tl.load(x_ptr + r64[:, None] * stride_xm + offs[None, :], mask=ok, other=0.0).to(tl.float32)
    scale = act_scale(tl.max(tl.abs(xk), axis=1), False)
    if FAST_DIV:
        rcp = tl.math.div_rn(tl.full((ROWS,), 1.0, tl.float32), scale)
        q = div_by_scale(xk, scale[:, None], rcp[:, None], False)
    else:
        q = tl.math.div_rn(xk, scale[:, None])
    q = tl.clamp(q, -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + r64[:, None] * K + offs[None, :], to_e4m3(q, False), mask=ok)
    tl.store(s_ptr + rows, scale, mask=rows < M)


def aq(x, mode, rows, fast, evict, warps):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    qb = 1 << (k - 1).bit_length()
    aq_rows[(triton.cdiv(m, rows),)](x, q, s, mode, m, k, x.stride(0), QBLOCK=qb, ROWS=rows, FAST_DIV=fast,
                                     EVICT=evict, num_warps=warps, num_stages=1)
    return q, s


def main(out):
    torch.manual_seed(0)
    mode = new_mode_tensor("cuda", "fp8")
    res = []
    variants = {"cur": lambda x: act_quant(x, mode)}
    for rows, warps in ((1, 4), (1, 8), (1, 16), (2, 8), (4, 8), (4, 16), (8, 16)):
        for fast in (False, True):
            variants[f"r{rows}w{warps}{'f' if fast else 'd'}"] = (
                lambda x, r=rows, f=fast, w=warps: aq(x, mode, r, f, False, w))
    variants["r1w8f_ev"] = lambda x: aq(x, mode, 1, True, True, 8)
    variants["r2w8f_ev"] = lambda x: aq(x, mode, 2, True, True, 8)
    for k in (4096, 8192, 14336, 28672):
        for m in (1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda").half() * 3
            rq, rs = quantize_per_token(x)
            row = dict(m=m, k=k)
            y16 = torch.empty_like(x)
            row["copy16_us"] = bench(lambda: y16.copy_(x))
            for name, fn in variants.items():
                if k > 8192 and name not in ("cur", "r1w16d", "r1w16f", "r1w8f"):
                    continue  # too many registers
                try:
                    q, s = fn(x)
                    bad = int((q.view(torch.uint8) != rq.view(torch.uint8)).sum()) + int((s != rs.flatten()).sum())
                    row[name] = (bench(lambda: fn(x)), bad)
                except Exception as e:  # noqa: BLE001
                    row[name] = str(e)[:80]
            print(json.dumps(row), flush=True)
            res.append(row)
    # end effect: quant + scaled_mm vs scaled_mm alone, 8B shapes
    ends = []
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        w = (torch.randn(n, k, device="cuda") * 0.05).to(torch.float8_e4m3fn)
        ws = torch.full((1, n), 2.0 ** -8, device="cuda")
        for m in (1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda").half()
            q, s = act_quant(x, mode)
            e = dict(n=n, k=k, m=m)
            e["mm_only"] = bench(lambda: torch._scaled_mm(q, w.t(), scale_a=s.view(-1, 1), scale_b=ws,
                                                          out_dtype=torch.half))
            for name in ("cur", "r1w8f", "r1w8f_ev", "r2w8f"):
                f = variants[name]

                def op(f=f):
                    qq, ss = f(x)
                    return torch._scaled_mm(qq, w.t(), scale_a=ss.view(-1, 1), scale_b=ws, out_dtype=torch.half)
                e[name] = bench(op)
            w16 = w.half()
            e["fp16"] = bench(lambda: torch.matmul(x, w16.t()))
            print(json.dumps(e), flush=True)
            ends.append(e)
    json.dump(dict(quant=res, end=ends), open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
