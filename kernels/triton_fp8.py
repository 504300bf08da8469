"""NestedFP8 GEMM in Triton: E4M3 tensor cores on the upper plane alone.

``y = (q(x) @ upper.T) * (s_x * 2**(-8 + scale_exp)) + bias`` with ``q(x)`` the per-token dynamic
E4M3 quantization of ``kernels.reference.quantize_per_token`` (absmax / 448). Like the FP16 kernel
the weight takes the MMA's M slot (swap AB), so a decode batch uses a 16..64-wide token tile, and
at small M the kernel streams half the weight bytes of FP16.

Activation quantization (absmax pass, then a quantizing pass over each token row) runs, in the
op, inside the FP16 kernel's launch when the mode is FP8 (see ``triton_dispatch``), so the op
makes two launches in either mode; standalone, ``act_quant`` launches it on its own; or, per the
tile table, fused into this GEMM (``fused_quant``: each program quantizes its token rows itself,
which only pays off at the smallest M). Scales and codes equal ``kernels.reference``'s, also where
the division is the fast one (``div_by_scale``).

Also here: the operand checks and tile order both GEMMs share.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import cuda as tl_cuda

from kernels.fast_launch import cdiv, has_gdc, launch
from kernels.nested_format import FP8_WEIGHT_SCALE_EXP
from kernels.split_k import launch_buffers, reduce_partials, split_ids
from kernels.tuning import TileConfig, get_config

FP8_MAX = tl.constexpr(448.0)
# torch on CUDA divides by a Python scalar as a multiply by its fp32 reciprocal (ATen's
# div_true_kernel_cuda), so the reference's amax / 448 is amax * fp32(1/448) there; on the CPU it
# is a true division. The kernels match the reference of the device they run on.
FP8_MAX_RCP = tl.constexpr(float(torch.tensor(1.0 / 448.0, dtype=torch.float32)))
MIN_ACT_SCALE = tl.constexpr(1e-12)  # kernels.reference._MIN_ACT_SCALE
ONE_PASS_MAX_K = 8192  # act_quant holds rows up to this long in registers (16 warps x 16 values a thread)
# ... and up to this long while M is at most ONE_PASS_LONG_MAX_M (16 warps x 64 values a thread): there a
# program quantizes each of a few rows, and the two-pass loop's dependent 1024-wide loads took 8-15 us on
# the 14336- and 28672-wide rows of the down projections; at large M the rows keep the SMs busy anyway
# and the narrower programs were a few percent faster (the H200, 2026-11-22: docs/BENCHMARKS.md, "Kernels v7").
ONE_PASS_LONG_MAX_K = 32768
ONE_PASS_LONG_MAX_M = 256
FAST_DIV_FROM = 8192  # one-pass rows longer than this divide with div_by_scale: div_rn's slow-path calls hold
# registers that 32-64 values a thread need (docs/BENCHMARKS.md, "act_quant v2"); shorter rows keep div_rn


def _check_operands(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> tuple[int, int, int]:
    if x2d.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"NestedFP kernels take float16 or bfloat16 activations, got {x2d.dtype}")
    n, k = upper.shape
    if x2d.shape[1] != k or lower.shape != upper.shape:
        raise ValueError(f"shape mismatch: x {tuple(x2d.shape)}, upper {tuple(upper.shape)}, lower {tuple(lower.shape)}")
    if not (upper.is_contiguous() and lower.is_contiguous() and x2d.stride(1) == 1):
        raise ValueError("planes must be contiguous and x must have unit stride along K")
    return x2d.shape[0], n, k


def prepare(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, out: torch.Tensor | None,
            checked: bool) -> tuple[int, int, int, torch.Tensor]:
    """(M, N, K, out) for a GEMM wrapper: operands checked unless ``checked`` (the dispatcher did),
    ``out`` allocated in x's dtype if None."""
    m, n, k = (x2d.shape[0], *upper.shape) if checked else _check_operands(x2d, upper, lower)
    if out is None:
        out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    return m, n, k, out


@triton.jit
def tile_ids(pid, M, N, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    """Grouped tile order: GROUP weight-row blocks share each activation block while hot in L2."""
    num_n = tl.cdiv(N, BLOCK_N)
    num_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP * num_m
    first_n = (pid // per_group) * GROUP
    size = min(num_n - first_n, GROUP)
    pid_n = first_n + (pid % per_group) % size
    pid_m = (pid % per_group) // size
    return pid_n, pid_m


@triton.jit
def to_e4m3(q, INTERPRET: tl.constexpr):
    """fp32 in [-448, 448] -> E4M3, rounded to nearest-even like torch's ``.to(float8_e4m3fn)``.

    The GPU converts in hardware (cvt.rn.satfinite). Triton's interpreter rounds half-up and
    drops mantissa carries, so there the value is first rounded onto the E4M3 grid in fp32
    (adding and subtracting 1.5 * 2**23 ulps rounds to the ulp, nearest-even) and then converts
    exactly.
    """
    if INTERPRET:
        q = q.to(tl.float32)  # the interpreter may have promoted to float64 along the way
        e = tl.maximum(((q.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)  # E4M3 ulp = 2**(e-3)
        c = (((e + 147) << 23) | 0x400000).to(tl.float32, bitcast=True)  # 1.5 * 2**(e + 20)
        r = (q + c) - c
        q = tl.where(r == 0.0, q * 0.0, r)  # keep the sign of values that round to zero
    return q.to(tl.float8e4nv)


@triton.jit
def act_scale(amax, INTERPRET: tl.constexpr):
    """Per-token scale = max(amax / 448, 1e-12), rounded as kernels.reference rounds it on this device."""
    if INTERPRET:
        s = tl.math.div_rn(amax, FP8_MAX)
    else:
        s = amax * FP8_MAX_RCP
    return tl.maximum(s, MIN_ACT_SCALE)


@triton.jit
def div_by_scale(x, s, r, INTERPRET: tl.constexpr):
    """``x / s`` as torch divides, given ``r = div_rn(1, s)``: 5 flops and a sign, no div.rn (whose
    slow-path call holds registers). Used where the GEMM quantizes x itself (``fused_quant``, small M)
    and by ``act_quant`` on long rows.

    Exactness matters: fp16 inputs often sit within an ulp of an E4M3 tie (x = 0.75 * amax gives
    336.0), where a plain ``x * (1/s)`` rounds the other way. q = x*r is within 2 ulps; each
    Markstein step (e = fma(-q, s, x) is exact; q += e*r) brings it closer. The steps turn x = -0
    into +0 (fma(+0, s, -0) = +0), so q takes x's sign bit at the end. With it, the E4M3 code equals
    div_rn's for every finite fp16 and bf16 pair (amax, x) with |x| <= amax and s = act_scale(amax),
    about 2e9 of them, checked on the H200 (tests/test_quantize_cuda.py). The interpreter just divides.
    """
    if INTERPRET:
        return tl.math.div_rn(x, s)
    q = x * r
    q = tl.fma(tl.fma(-q, s, x), r, q)
    q = tl.fma(tl.fma(-q, s, x), r, q)
    sign = x.to(tl.uint32, bitcast=True) & 0x80000000
    return (q.to(tl.uint32, bitcast=True) & 0x7FFFFFFF | sign).to(tl.float32, bitcast=True)


@triton.jit
def quantize_row_once(x_row, q_row, K, QBLOCK: tl.constexpr, FAST_DIV: tl.constexpr, INTERPRET: tl.constexpr):
    """One token row of up to QBLOCK values, read once and quantized from registers; returns its scale."""
    offs = tl.arange(0, QBLOCK)
    xk = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
    scale = act_scale(tl.max(tl.abs(xk), axis=0), INTERPRET)
    if FAST_DIV:
        q = div_by_scale(xk, scale, tl.math.div_rn(tl.full((), 1.0, tl.float32), scale), INTERPRET)
    else:
        q = tl.math.div_rn(xk, scale)
    tl.store(q_row + offs, to_e4m3(tl.clamp(q, -FP8_MAX, FP8_MAX), INTERPRET), mask=offs < K)
    return scale


@triton.jit
def quantize_row_twice(x_row, q_row, K, CHUNK: tl.constexpr, INTERPRET: tl.constexpr):
    """One token row of any length: an absmax pass, then a quantizing pass (the row stays in L2), CHUNK values
    a step; returns its scale. Exact division: both passes are memory-bound."""
    offs = tl.arange(0, CHUNK)
    amax = tl.zeros((CHUNK,), dtype=tl.float32)
    for k0 in tl.range(0, K, CHUNK, num_stages=1):
        xk = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(xk))
    scale = act_scale(tl.max(amax, axis=0), INTERPRET)
    for k0 in tl.range(0, K, CHUNK, num_stages=1):
        xk = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        q = tl.clamp(tl.math.div_rn(xk, scale), -FP8_MAX, FP8_MAX)
        tl.store(q_row + k0 + offs, to_e4m3(q, INTERPRET), mask=k0 + offs < K)
    return scale


@triton.jit
def quantize_rows(x_ptr, q_ptr, s_ptr, M, K, stride_xm, QBLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    """Per-token E4M3 quantization, rows pid, pid + nprog, ...: a row that fits in QBLOCK is read
    once, a longer one twice. For launches that do other work too (the FP16 kernel's in FP8 mode)."""
    for row in tl.range(tl.program_id(0), M, tl.num_programs(0), num_stages=1):
        row64 = tl.cast(row, tl.int64)
        if K <= QBLOCK:
            scale = quantize_row_once(x_ptr + row64 * stride_xm, q_ptr + row64 * K, K, QBLOCK, False, INTERPRET)
        else:
            scale = quantize_row_twice(x_ptr + row64 * stride_xm, q_ptr + row64 * K, K, QBLOCK, INTERPRET)
        tl.store(s_ptr + row, scale)


@triton.jit(do_not_specialize=["M"])
def act_quant_kernel(x_ptr, q_ptr, s_ptr, mode_ptr, M, K, stride_xm, QBLOCK: tl.constexpr, ONE_PASS: tl.constexpr,
                     FAST_DIV: tl.constexpr, INTERPRET: tl.constexpr, GDC: tl.constexpr, PDL: tl.constexpr):
    """Standalone per-token quantization, a program per row: read once (ONE_PASS, rows up to QBLOCK) or
    twice in QBLOCK-wide steps. One path per compile: a kernel holding both spilled registers, and its one-pass
    rows ran slower (docs/BENCHMARKS.md, "act_quant v2"). FAST_DIV: ``div_by_scale`` (long rows).
    With PDL (launched as a programmatic dependent of the FP16 launch, whose output it does not read) it
    waits for that launch before it ends, so that the kernels after it also run after that one."""
    if GDC:  # sm_90+: a PDL-launched Gluon FP8 GEMM may start its weight prefetch
        tl_cuda.gdc_launch_dependents()
    if tl.load(mode_ptr) == 1:
        row = tl.program_id(0).to(tl.int64)
        if ONE_PASS:
            scale = quantize_row_once(x_ptr + row * stride_xm, q_ptr + row * K, K, QBLOCK, FAST_DIV, INTERPRET)
        else:
            scale = quantize_row_twice(x_ptr + row * stride_xm, q_ptr + row * K, K, QBLOCK, INTERPRET)
        tl.store(s_ptr + row, scale)
    if PDL:
        tl_cuda.gdc_wait()


@triton.jit(do_not_specialize=["M"])
def nested_fp8_kernel(
    x_ptr, xs_ptr, u_ptr, bias_ptr, y_ptr, mode_ptr,
    M, N, K, stride_xm, stride_ym, w_scale,
    ws_ptr, sem_ptr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, FUSED_QUANT: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """``x_ptr``: E4M3 activations with scales at ``xs_ptr``, or (FUSED_QUANT) the raw fp16/bf16 x.
    ``SPLIT_K`` > 1: that many programs per tile, each over a slice of K (``kernels.split_k``)."""
    if tl.load(mode_ptr) != 1:
        return
    tile, pid_k, k_lo, k_hi = split_ids(K, BLOCK_K, SPLIT_K)
    pid_n, pid_m = tile_ids(tile, M, N, BLOCK_N, BLOCK_M, GROUP)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    rn = offs_n % N
    rm = offs_m % M
    u_ptrs = u_ptr + rn[:, None].to(tl.int64) * K + offs_k[None, :] + k_lo * BLOCK_K
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    if FUSED_QUANT:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_ok = offs_k[None, :] < K - k * BLOCK_K
            xt = tl.load(x_ptrs + k * BLOCK_K, mask=k_ok, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xt), axis=1))
        x_scale = act_scale(amax, INTERPRET)
        x_rcp = tl.math.div_rn(tl.full((BLOCK_M,), 1.0, tl.float32), x_scale)
    x_ptrs += k_lo * BLOCK_K
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in range(k_lo, k_hi):
        if EVEN_K:
            w = tl.load(u_ptrs)
            xt = tl.load(x_ptrs)
        else:
            k_ok = offs_k[None, :] < K - k * BLOCK_K
            w = tl.load(u_ptrs, mask=k_ok, other=0.0)
            xt = tl.load(x_ptrs, mask=k_ok, other=0.0)
        if FUSED_QUANT:
            q = div_by_scale(xt.to(tl.float32), x_scale[:, None], x_rcp[:, None], INTERPRET)
            xt = to_e4m3(tl.clamp(q, -FP8_MAX, FP8_MAX), INTERPRET)
        acc = tl.dot(w, tl.trans(xt), acc)
        u_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if SPLIT_K > 1:
        acc, last = reduce_partials(acc, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K)
        if not last:
            return
    if not FUSED_QUANT:
        x_scale = tl.load(xs_ptr + rm)
    acc = acc * (x_scale * w_scale)[None, :]  # same association as the reference: acc * (s_x * s_w)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[:, None]
    y_ptrs = y_ptr + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_m[None, :] < M))


def act_quant(x2d: torch.Tensor, mode: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None,
              pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token E4M3 quantization of ``x2d`` ([M, K], unit stride along K) if ``mode[0] == 1``.

    A program per row; rows of up to ``ONE_PASS_MAX_K`` (``ONE_PASS_LONG_MAX_K`` at small M) are read
    from memory once (held in registers), longer ones twice, 8 values a thread per step.
    ``out``: (codes [M, K] E4M3, scales [M] fp32) to write into, for callers that must not allocate.
    ``pdl``: a programmatic dependent launch (sm_90+ only) of a kernel whose output it does not read
    (``x2d`` was written before that kernel started): it runs while that kernel runs.
    """
    m, k = x2d.shape
    q, s = out if out is not None else (torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device),
                                        torch.empty((m,), dtype=torch.float32, device=x2d.device))
    if m:
        launch(act_quant_kernel, *act_quant_launch(x2d, q, s, mode, pdl))
    return q, s


def act_quant_launch(x2d: torch.Tensor, q: torch.Tensor, s: torch.Tensor, mode: torch.Tensor,
                     pdl: bool = False) -> tuple:
    """``act_quant``'s launch as ``fast_launch.launch`` takes it after the kernel: (grid, args, constexprs, warps,
    stages, specialization, PDL). Shared with ``kernels.eager_fp8``, which prepares it once per shape."""
    m, k = x2d.shape
    sx = x2d.stride(0)
    one_pass = k <= ONE_PASS_MAX_K or (k <= ONE_PASS_LONG_MAX_K and m <= ONE_PASS_LONG_MAX_M)
    if one_pass:
        qblock = max(1024, 1 << (k - 1).bit_length())
        warps = max(4, min(16, qblock // 512))
    else:  # 8 values a thread per step (the fastest of the H200's two-pass variants: "act_quant v2")
        qblock = 2048 if k <= 16384 else 4096
        warps = qblock // 256
    gdc = has_gdc(x2d)
    pdl = pdl and gdc
    return (m, (x2d, q, s, mode, m, k, sx),
            dict(QBLOCK=qblock, ONE_PASS=one_pass, FAST_DIV=one_pass and qblock > FAST_DIV_FROM,
                 INTERPRET=not x2d.is_cuda, GDC=gdc, PDL=pdl), warps, 1,
            (x2d.dtype, x2d.data_ptr() & 15, k & 15, sx & 15, k == 1), pdl)


def nested_fp8_gemm(
    x2d: torch.Tensor,
    upper: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: TileConfig | None = None,
    checked: bool = False,
    quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Writes the FP8-mode product into ``out`` if ``mode[0] == 1``.

    Activations: ``quantized = (q, s)`` when an earlier launch (the dispatcher's FP16 launch)
    quantized them; else quantized here, fused into the GEMM or by ``act_quant`` per the config.
    """
    m, n, k, out = prepare(x2d, upper, upper, out, checked)
    if m == 0:
        return out
    cfg = config or get_config("fp8", n, k, m)
    fused = cfg.fused_quant and quantized is None
    if fused:
        xq, xs, stride = x2d, out, x2d.stride(0)  # xs unused
    else:
        (xq, xs), stride = quantized if quantized is not None else act_quant(x2d, mode), k
    so = out.stride(0)
    tiles = cdiv(n, cfg.block_n) * cdiv(m, cfg.block_m)
    cfg, ws, sem = launch_buffers(x2d, tiles, cfg, out)
    spec = (xq.dtype, xs.dtype, out.dtype, None if bias is None else bias.dtype, xq.data_ptr() & 15,
            out.data_ptr() & 15, upper.data_ptr() & 15, n & 15, k & 15, stride & 15, so & 15, n == 1, k == 1)
    launch(
        nested_fp8_kernel, tiles * cfg.split_k,
        (xq, xs, upper, bias if bias is not None else out, out, mode,
         m, n, k, stride, so, 2.0 ** (FP8_WEIGHT_SCALE_EXP + scale_exp), ws, sem),
        dict(HAS_BIAS=bias is not None, EVEN_K=k % cfg.block_k == 0, FUSED_QUANT=fused,
             INTERPRET=not x2d.is_cuda, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
             GROUP=cfg.group, SPLIT_K=cfg.split_k),
        cfg.num_warps, cfg.num_stages, spec,
    )
    return out

