"""act_quant at large M (a diagnostic, not part of the product): one-pass rows at fewer warps, two-pass rows
in wider steps, and a division that is cheap but exact where the E4M3 code depends on it.

Run from the repo root: PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-22-h200-act-quant-v2/act_quant_sweep.py OUT.json
[--round2 | --round3]

1. Exhaustive check of the divisions: for every finite positive fp16 (and bf16) amax and every finite x of
   that dtype with |x| <= amax, the E4M3 code of each division against ``div_rn``'s (torch's division on CUDA).
2. Timing: each variant's codes and scales against ``quantize_per_token`` first, then do_bench medians (the
   least of 3 rounds, variants interleaved) at M x K for the Llama K's.
3. ``--round2`` (instead of 1 and 2): two-pass variants at the long rows, one-pass rules at small M. Their
   STAGES (the loops' num_stages, 2 or 3) compile to the same kernel in Triton 3.6 (docs/BENCHMARKS.md).
4. ``--round3``: at M >= 1024, programs that loop over rows, the next row's load issued before a row is
   quantized.
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
from tests.kernel_helpers import fp_pairs  # the exhaustive check's decoding, shared with tests/test_quantize_cuda.py

# q = x / s, exactly as div.rn rounds it wherever the E4M3 code could differ: one Markstein step from
# x * r (r = 1 / s, correctly rounded) lands on the correctly rounded quotient or next to it, so the code
# can differ only if that value is within an fp32 ulp of an E4M3 midpoint (low 20 bits 0x7FFFF..0x80001)
# or below E4M3's normal range (2**-6, other midpoints); those take div.rn.
DIV_ASM = tl.constexpr("""
{
.reg .b32 q, e, a, t;
.reg .pred p, z, w;
mul.rn.f32 q, $1, $3;
neg.f32 e, q;
fma.rn.f32 e, e, $2, $1;
fma.rn.f32 q, e, $3, q;
and.b32 a, q, 0x7FFFFFFF;
sub.u32 t, a, 0x7FFFF;
and.b32 t, t, 0xFFFFF;
setp.le.u32 p, t, 2;
setp.lt.u32 z, a, 0x3C800000;
setp.ne.u32 w, a, 0;
and.pred z, z, w;
or.pred p, p, z;
@p div.rn.f32 q, $1, $2;
mov.b32 $0, q;
}
""")


@triton.jit
def divide(x, s, DIV: tl.constexpr):
    """x / s by DIV: 0 div_rn, 1 DIV_ASM, 2 div_by_scale (two Markstein steps, no fallback), 3 the same with
    x's sign (its steps turn x = -0 into +0: e = fma(+0, s, -0) = +0)."""
    if DIV == 0:
        return tl.math.div_rn(x, s)
    r = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
    if DIV == 1:
        return tl.inline_asm_elementwise(DIV_ASM, "=r,r,r,r", [x, tl.broadcast_to(s, x.shape),
                                                               tl.broadcast_to(r, x.shape)],
                                         dtype=tl.float32, is_pure=True, pack=1)
    q = div_by_scale(x, s, r, False)
    if DIV == 3:
        qb = q.to(tl.uint32, bitcast=True) & 0x7FFFFFFF | x.to(tl.uint32, bitcast=True) & 0x80000000
        q = qb.to(tl.float32, bitcast=True)
    return q


@triton.jit
def div_check_kernel(amax_bits_ptr, x_bits_ptr, NX, bad_ptr, zero_ptr, DIV: tl.constexpr, BF16: tl.constexpr,
                     BLOCK: tl.constexpr):
    amax, x, in_range = fp_pairs(amax_bits_ptr, x_bits_ptr, NX, BF16, BLOCK)
    s = act_scale(amax, False)
    ref = to_e4m3(tl.clamp(tl.math.div_rn(x, s), -FP8_MAX, FP8_MAX), False).to(tl.uint8, bitcast=True)
    got = to_e4m3(tl.clamp(divide(x, tl.full(x.shape, 0.0, tl.float32) + s, DIV), -FP8_MAX, FP8_MAX),
                  False).to(tl.uint8, bitcast=True)
    bad = (ref != got) & in_range
    tl.atomic_add(bad_ptr, tl.sum(bad.to(tl.int32), axis=0))
    tl.atomic_add(zero_ptr, tl.sum((bad & (x == 0.0)).to(tl.int32), axis=0))


def div_check(dtype: torch.dtype, div: int) -> dict:
    """Mismatching codes over every finite (amax > 0, |x| <= amax) pair of ``dtype``; how many of them at x = +-0."""
    allb = torch.arange(-32768, 32768, dtype=torch.int32, device="cuda").to(torch.int16)
    vals = allb.view(dtype).float()
    finite = torch.isfinite(vals)
    xs = allb[finite].contiguous()
    amaxes = allb[finite & (vals > 0)].contiguous()
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    zero = torch.zeros(1, dtype=torch.int32, device="cuda")
    block = 1024
    div_check_kernel[(amaxes.numel(), triton.cdiv(xs.numel(), block))](
        amaxes, xs, xs.numel(), bad, zero, DIV=div, BF16=dtype == torch.bfloat16, BLOCK=block)
    sorted_abs = vals[finite].abs().sort().values
    pairs = int(torch.searchsorted(sorted_abs, vals[finite & (vals > 0)], right=True).sum())
    return dict(dtype=str(dtype), div=div, pairs=pairs, bad=int(bad), bad_at_zero=int(zero))


@triton.jit
def aq_one(x_ptr, q_ptr, s_ptr, mode_ptr, M, K, stride_xm, QBLOCK: tl.constexpr, DIV: tl.constexpr):
    """One row per program, read once."""
    if tl.load(mode_ptr) != 1:
        return
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, QBLOCK)
    ok = offs < K
    xk = tl.load(x_ptr + row * stride_xm + offs, mask=ok, other=0.0).to(tl.float32)
    scale = act_scale(tl.max(tl.abs(xk), axis=0), False)
    q = tl.clamp(divide(xk, scale, DIV), -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + row * K + offs, to_e4m3(q, False), mask=ok)
    tl.store(s_ptr + row, scale)


@triton.jit
def aq_two(x_ptr, q_ptr, s_ptr, mode_ptr, M, K, stride_xm, CH: tl.constexpr, DIV: tl.constexpr,
           STAGES: tl.constexpr):
    """One row per program: an absmax pass, then a quantizing pass (from L2), CH values a step. (STAGES
    changes nothing in Triton 3.6: it pipelines no load that feeds no dot.)"""
    if tl.load(mode_ptr) != 1:
        return
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CH)
    amax = tl.zeros((CH,), dtype=tl.float32)
    for k0 in tl.range(0, K, CH, num_stages=STAGES):
        xk = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(xk))
    scale = act_scale(tl.max(amax, axis=0), False)
    for k0 in tl.range(0, K, CH, num_stages=STAGES):
        xk = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        q = tl.clamp(divide(xk, scale, DIV), -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + row * K + k0 + offs, to_e4m3(q, False), mask=k0 + offs < K)
    tl.store(s_ptr + row, scale)


@triton.jit
def aq_rows_loop(x_ptr, q_ptr, s_ptr, mode_ptr, M, K, stride_xm, QBLOCK: tl.constexpr):
    """Rows pid, pid + nprog, ..., each read once; the next row's load is issued before this row is
    quantized (by hand: Triton 3.6 does not pipeline loads that feed no dot, whatever num_stages says)."""
    if tl.load(mode_ptr) != 1:
        return
    offs = tl.arange(0, QBLOCK)
    step = tl.num_programs(0)
    row = tl.program_id(0)
    xk = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs, mask=(offs < K) & (row < M), other=0.0)
    for r in range(tl.program_id(0), M, step):
        nxt = r + step
        xn = tl.load(x_ptr + nxt.to(tl.int64) * stride_xm + offs, mask=(offs < K) & (nxt < M), other=0.0)
        xf = xk.to(tl.float32)
        scale = act_scale(tl.max(tl.abs(xf), axis=0), False)
        q = tl.clamp(tl.math.div_rn(xf, scale), -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + r.to(tl.int64) * K + offs, to_e4m3(q, False), mask=offs < K)
        tl.store(s_ptr + r, scale)
        xk = xn


def run_loop(x, mode, warps, programs):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    aq_rows_loop[(min(m, programs),)](x, q, s, mode, m, k, x.stride(0), QBLOCK=1 << (k - 1).bit_length(),
                                      num_warps=warps, num_stages=1)
    return q, s


def run_one(x, mode, div, warps):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    aq_one[(m,)](x, q, s, mode, m, k, x.stride(0), QBLOCK=1 << (k - 1).bit_length(), DIV=div, num_warps=warps,
                 num_stages=1)
    return q, s


def run_two(x, mode, div, warps, ch, stages):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    aq_two[(m,)](x, q, s, mode, m, k, x.stride(0), CH=ch, DIV=div, STAGES=stages, num_warps=warps)
    return q, s


def measure(m: int, k: int, variants: dict, copy: bool) -> dict:
    """One M x K cell: each variant's codes and scales against quantize_per_token (mismatches in ``bad``),
    then the least of 3 do_bench medians per variant, the variants interleaved (with an fp16 copy of x if
    ``copy``)."""
    x = torch.randn(m, k, device="cuda").half() * 3
    x[:, :: 97] *= 40  # outliers, so that some rows' codes use the small end of E4M3
    rq, rs = quantize_per_token(x)
    row = dict(m=m, k=k, bad={}, us={})
    y16 = torch.empty_like(x)
    times = {**({"copy16": []} if copy else {}), **{name: [] for name in variants}}
    for name, fn in variants.items():
        q, s = fn(x)
        row["bad"][name] = int((q.view(torch.uint8) != rq.view(torch.uint8)).sum()) + int((s != rs.flatten()).sum())
    for _ in range(3):
        if copy:
            times["copy16"].append(bench(lambda: y16.copy_(x)))
        for name, fn in variants.items():
            times[name].append(bench(lambda fn=fn: fn(x)))
    row["us"] = {name: min(t) for name, t in times.items()}
    row["rounds"] = times
    return row


def round2(res: dict) -> None:
    """Two-pass variants at the long rows, and the one-pass rule at small M."""
    mode = new_mode_tensor("cuda", "fp8")
    cells = [(m, k) for k in (14336, 28672) for m in (1024, 4096, 8192)]
    cells += [(m, k) for k in (4096, 8192, 14336, 28672) for m in (1, 16, 64, 256)]
    for m, k in cells:
        variants = {"cur": lambda x: act_quant(x, mode)}
        qb = 1 << (k - 1).bit_length()
        if m <= 256 or k <= 8192:
            for warps in (4, 8, 16):
                if qb // (32 * warps) <= 64:
                    for div in (0, 3):
                        variants[f"one_w{warps}_d{div}"] = lambda x, d=div, w=warps: run_one(x, mode, d, w)
        if k > 8192 and m > 256:
            for ch, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)):
                for stages in (2, 3):
                    for div in (0, 3):
                        variants[f"two_c{ch}_w{warps}_s{stages}_d{div}"] = (
                            lambda x, d=div, c=ch, w=warps, st=stages: run_two(x, mode, d, w, c, st))
        row = measure(m, k, variants, copy=False)
        best = sorted(row["us"].items(), key=lambda kv: kv[1])[:4]
        print(json.dumps(dict(m=m, k=k, bad=sum(row["bad"].values()), cur=round(row["us"]["cur"], 1),
                              best=[(n, round(t, 1)) for n, t in best])), flush=True)
        res["round2"].append(row)


def round3(res: dict) -> None:
    """Rows read once, one per program (as shipped) against programs that loop over rows with the next
    row's load issued before a row is quantized, at M >= 1024."""
    mode = new_mode_tensor("cuda", "fp8")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for k in (4096, 8192):
        for m in (1024, 4096, 8192):
            variants = {"cur": lambda x: act_quant(x, mode)}
            for warps in (4, 8, 16):
                for per_sm in (1, 2, 4, 8):
                    variants[f"loop_w{warps}_p{per_sm}"] = (
                        lambda x, w=warps, p=per_sm * sms: run_loop(x, mode, w, p))
            row = measure(m, k, variants, copy=True)
            best = sorted(row["us"].items(), key=lambda kv: kv[1])[:5]
            print(json.dumps(dict(m=m, k=k, bad=sum(row["bad"].values()), cur=round(row["us"]["cur"], 1),
                                  copy=round(row["us"]["copy16"], 1), best=[(n, round(t, 1)) for n, t in best])),
                  flush=True)
            res["round3"].append(row)


def main(out: str) -> None:
    torch.manual_seed(0)
    res = dict(div_check=[], quant=[], round2=[], round3=[])
    for flag, fn in (("--round2", round2), ("--round3", round3)):
        if flag in sys.argv:
            fn(res)
            json.dump(res, open(out, "w"), indent=1)
            return
    for dtype in (torch.float16, torch.bfloat16):
        for div in (1, 2, 3):
            r = div_check(dtype, div)
            print(json.dumps(r), flush=True)
            res["div_check"].append(r)
    mode = new_mode_tensor("cuda", "fp8")
    for k in (4096, 8192, 14336, 28672):
        variants = {"cur": lambda x: act_quant(x, mode)}
        qb = 1 << (k - 1).bit_length()
        for div in (0, 3):
            for warps in (4, 8, 16):
                if qb // (32 * warps) <= 128:
                    variants[f"one_w{warps}_d{div}"] = lambda x, d=div, w=warps: run_one(x, mode, d, w)
            if k > 8192:
                for ch in (2048, 4096, 8192):
                    variants[f"two_c{ch}_w8_d{div}"] = lambda x, d=div, c=ch: run_two(x, mode, d, 8, c, 2)
        for m in (1024, 4096, 8192):
            row = measure(m, k, variants, copy=True)
            print(json.dumps(dict(m=m, k=k, bad=row["bad"], us={n: round(t, 1) for n, t in row["us"].items()})),
                  flush=True)
            res["quant"].append(row)
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
