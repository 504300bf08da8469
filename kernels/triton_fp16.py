"""NestedFP16 GEMM in Triton: ``y = x @ W.T`` with W rebuilt in registers from its two byte planes.

The merge is the byte-level carry fix of ``nested_format._merge_chunk``, done four weights per
32-bit register with one PTX block (8 integer instructions per 4 weights) on the GPU; the Triton
interpreter (CPU tests) runs the same algorithm written with ``tl`` integer ops.

Two tile shapes, picked per (N, K, M bucket) by ``kernels.tuning``:
- ``swap_ab`` (decode): the weight takes the MMA's M slot (``(W @ x.T).T``), so 1..16 tokens fill a
  16-wide N slot. The H200 sweep picks 16-32 weight rows here (mma.sync): register-A wgmma tiles
  of 64-128 rows measured 2-4x slower, as wgmma waits on each merged tile.
- weights in the N slot (M >= 64): the merged tile goes through shared memory to wgmma.
docs/BENCHMARKS.md has the numbers and where the time goes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import cuda as tl_cuda

from kernels.fast_launch import cdiv, has_gdc, launch
from kernels.split_k import launch_buffers, reduce_partials, split_ids
from kernels.triton_fp8 import prepare, quantize_rows, tile_ids
from kernels.tuning import TileConfig, get_config

# Per 32-bit register: u = 4 upper bytes, l = 4 lower bytes, one weight per byte lane.
#   c = (u ^ (l >> 7)) & 1           the rounding carry of each lane (low bits disagree)
#   t = u - c                        undo it; no lane borrows (u & 0x7F >= c whenever c = 1)
#   h = (t & 0x80) | (t >> 1 & 0x3F) FP16 high byte: sign, 0, the upper 6 bits of the 7-bit magnitude
#   out = bytes (l0, h0, l1, h1), (l2, h2, l3, h3)   FP16 low byte is the lower plane as stored
_MERGE_ASM = tl.constexpr("""
{
.reg .b32 c, t, s, h;
shr.b32 c, $3, 7;
lop3.b32 c, $2, c, 0x01010101, 0x28;
sub.u32 t, $2, c;
shr.b32 s, t, 1;
and.b32 s, s, 0x3F3F3F3F;
lop3.b32 h, t, 0x80808080, s, 0xEA;
prmt.b32 $0, $3, h, 0x5140;
prmt.b32 $1, $3, h, 0x7362;
}
""")


@triton.jit
def merge_planes(u, lo, USE_ASM: tl.constexpr):
    """uint8 upper + uint8 lower tiles -> the exact FP16 weight tile (before any pre-scale)."""
    if USE_ASM:
        w = tl.inline_asm_elementwise(
            _MERGE_ASM, "=r,=r,r,r", [u, lo], dtype=tl.float16, is_pure=True, pack=4
        )
    else:
        u32 = u.to(tl.int32)
        l32 = lo.to(tl.int32)
        t = u32 - ((u32 ^ (l32 >> 7)) & 1)
        h = (t & 0x80) | ((t >> 1) & 0x3F)
        w = ((h << 8) | l32).to(tl.int16).to(tl.float16, bitcast=True)
    return w


@triton.jit(do_not_specialize=["M"])
def nested_fp16_kernel(
    x_ptr, u_ptr, l_ptr, bias_ptr, y_ptr, mode_ptr, q_ptr, s_ptr,
    M, N, K, stride_xm, stride_ym, out_scale, ws_ptr, sem_ptr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, USE_ASM: tl.constexpr, QUANT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    SWAP_AB: tl.constexpr, SPLIT_K: tl.constexpr, GDC: tl.constexpr,
):
    # The mode lives on the device: a CUDA graph captured once serves both modes. In FP8 mode
    # this launch is not wasted: with QUANT its programs quantize x for the FP8 GEMM that follows.
    if GDC:  # sm_90+: launches after this one with PDL (act_quant, the Gluon FP8 GEMM) may start now
        tl_cuda.gdc_launch_dependents()
    mode = tl.load(mode_ptr)
    if mode != 0:
        if QUANT:
            if mode == 1:
                quantize_rows(x_ptr, q_ptr, s_ptr, M, K, stride_xm, 1024, not USE_ASM)
        return
    u_ptr = u_ptr.to(tl.pointer_type(tl.uint8))  # the E4M3 upper plane, read as bytes
    tile, pid_k, k_lo, k_hi = split_ids(K, BLOCK_K, SPLIT_K)  # SPLIT_K programs per tile (kernels.split_k)
    pid_n, pid_m = tile_ids(tile, M, N, BLOCK_N, BLOCK_M, GROUP)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past N / M wrap onto valid rows (unmasked, vectorised loads); the store drops them.
    rn = offs_n % N
    rm = offs_m % M
    w_off = rn[:, None].to(tl.int64) * K + offs_k[None, :] + k_lo * BLOCK_K
    u_ptrs = u_ptr + w_off
    l_ptrs = l_ptr + w_off
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + offs_k[None, :] + k_lo * BLOCK_K
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi):
        if EVEN_K:
            u = tl.load(u_ptrs)
            lo = tl.load(l_ptrs)
            xt = tl.load(x_ptrs)
        else:
            k_ok = offs_k[None, :] < K - k * BLOCK_K
            u = tl.load(u_ptrs, mask=k_ok, other=0)  # u = lo = 0 merges to +0.0
            lo = tl.load(l_ptrs, mask=k_ok, other=0)
            xt = tl.load(x_ptrs, mask=k_ok, other=0.0)
        w = merge_planes(u, lo, USE_ASM).to(xt.dtype)  # bf16 activations: W rounded as F.linear would
        if SWAP_AB:
            acc = tl.dot(w, tl.trans(xt), acc)  # W rows in the MMA's M slot; W stays in registers
        else:
            acc = tl.dot(xt, tl.trans(w), acc)  # W through shared memory: wgmma runs asynchronously
        u_ptrs += BLOCK_K
        l_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if SPLIT_K > 1:
        acc, last = reduce_partials(acc, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K)
        if not last:
            return
    if SWAP_AB:
        acc = tl.trans(acc)
    acc = acc * out_scale  # 2**scale_exp: exact
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def nested_fp16_gemm(
    x2d: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: TileConfig | None = None,
    checked: bool = False,
    quant_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Writes ``x2d @ (merge(upper, lower) * 2**scale_exp).T + bias`` into ``out`` if ``mode[0] == 0``.

    Otherwise ``out`` is left as it was, and, if ``mode[0] == 1`` and ``quant_out = (q, s)`` is
    given, the launch writes the per-token E4M3 quantization of x there for the FP8 GEMM (the
    dispatcher launches both precisions' kernels and the device-side mode picks the work).
    """
    m, n, k, out = prepare(x2d, upper, lower, out, checked)
    if m == 0:
        return out
    cfg = config or get_config("fp16", n, k, m)
    q, s = quant_out if quant_out is not None else (out, out)
    sx, so = x2d.stride(0), out.stride(0)
    spec = (x2d.dtype, out.dtype, None if bias is None else bias.dtype, x2d.data_ptr() & 15, out.data_ptr() & 15,
            upper.data_ptr() & 15, lower.data_ptr() & 15, n & 15, k & 15, sx & 15, so & 15, n == 1, k == 1)
    tiles = cdiv(n, cfg.block_n) * cdiv(m, cfg.block_m)
    cfg, ws, sem = launch_buffers(x2d, tiles, cfg, out)
    launch(
        nested_fp16_kernel, tiles * cfg.split_k,
        (x2d, upper, lower, bias if bias is not None else out, out, mode, q, s, m, n, k, sx, so, 2.0**scale_exp, ws, sem),
        dict(HAS_BIAS=bias is not None, EVEN_K=k % cfg.block_k == 0, USE_ASM=x2d.is_cuda, QUANT=quant_out is not None,
             BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, GROUP=cfg.group, SWAP_AB=cfg.swap_ab,
             SPLIT_K=cfg.split_k, GDC=has_gdc(x2d)),
        cfg.num_warps, cfg.num_stages, spec,
    )
    return out
