"""Both precisions' Gluon GEMMs in one launch: FP16 or FP8 by the mode tensor, read on the device.

Why: a CUDA graph holds the launches of both modes, and each exits unless the mode is its own. Captured
as three launches (the FP16 GEMM, ``act_quant``, the FP8 GEMM), the idle ones cost each mode time: on the
H200, at M <= 64, the op ran about 5% slower than the FP16 GEMM alone in FP16 mode, and 8-9% slower than
``act_quant`` + the FP8 GEMM in FP8 mode (docs/BENCHMARKS.md, "Idle launches in CUDA graphs"). Here a
graph holds two: ``act_quant`` (it exits at once in FP16 mode), then this kernel as its programmatic
dependent (PDL). In FP16 mode it runs ``kernels.gluon_fp16``'s pipeline and does not wait for
``act_quant``; in FP8 mode ``kernels.gluon_fp8``'s, whose TMA worker prefetches weights before it waits
for the codes. Either way it waits for ``act_quant`` before it ends, so the stream's next kernel runs
after both. What it bought, same run: FP8 mode 1-13% faster per shape (geomean 2-3% at M <= 128); FP16 mode
within 1% either way, as an idle launch ahead of the GEMM costs about what two behind it did.

The two pipelines are the two modules' partitions, unchanged, in the two branches of one kernel: shared
memory is allocated per branch (the launch takes the larger), the grid is the larger of the two modes' (a
program past its mode's count exits), and the consumer warps are one number, so the two tiles share
BLOCK_W. Stream-K (which divides work by the grid size) is not offered; split-K is, per mode.
"""

from __future__ import annotations

import torch

from kernels import gluon_common as common
from kernels import gluon_fp8, gluon_fp16
from kernels.fast_launch import cdiv, launch
from kernels.gluon_common import gl
from kernels.nested_format import FP8_WEIGHT_SCALE_EXP
from kernels.split_k import split_buffers
from kernels.tuning import STREAM_K, tile_split

MAX_M = 256  # pairable: the largest M the paired launch was measured and tested at


@common.jit(do_not_specialize=["M", "programs16", "programs8"])
def nested_dual_rs_kernel(
    x_desc, u_desc, l_desc, q_desc, w_desc, y_ptr, bias_ptr, mode_ptr, xs_ptr, ws16_ptr, sem16_ptr, ws8_ptr,
    sem8_ptr, M, N, K, stride_ym, out_scale, w_scale, programs16, programs8,
    HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, GROUP: gl.constexpr, NUM_WARPS: gl.constexpr,
    BLOCK_T16: gl.constexpr, BLOCK_K16: gl.constexpr, STAGES16: gl.constexpr, SPLIT16: gl.constexpr,
    BLOCK_T8: gl.constexpr, BLOCK_K8: gl.constexpr, STAGES8: gl.constexpr, SPLIT8: gl.constexpr,
):
    mode = gl.load(mode_ptr)
    pid = gl.program_id(0)
    if mode == 0 and pid < programs16:
        gluon_fp16.gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws16_ptr, sem16_ptr, M, N, K, stride_ym, out_scale,
                        HAS_BIAS, BLOCK_W, BLOCK_T16, BLOCK_K16, STAGES16, GROUP, NUM_WARPS, SPLIT16)
    elif mode == 1 and pid < programs8:
        gluon_fp8.gemm(q_desc, w_desc, y_ptr, xs_ptr, bias_ptr, ws8_ptr, sem8_ptr, M, N, K, stride_ym, w_scale,
                       HAS_BIAS, BLOCK_W, BLOCK_T8, BLOCK_K8, STAGES8, GROUP, SPLIT8, NUM_WARPS, True)
    common.gdc_wait()  # act_quant (the kernel before) has ended: the stream's next kernel runs after both


def pairable(tile16: tuple[int, ...] | None, cfg8: tuple[int, ...] | None, m: int) -> bool:
    """Whether one launch should hold both: the same weight rows per program (one warp count), no stream-K,
    and the same number of programs at this M. Why the last: where the grids differed (split-K on one side),
    the one launch ran slower than three in FP16 mode (8B.o, M = 1: 21.8 against 21.1 us) and gained nothing
    in FP8 mode; with equal grids it gained 1-13% in FP8 mode (docs/BENCHMARKS.md, "Idle launches"). Only up
    to ``MAX_M``, where it was measured and tested; the FP8 table's larger-M configs may skip PDL, which this
    launch needs."""
    if m > MAX_M or not (tile16 and cfg8 and tile16[0] == cfg8[0]) or tile_split(tile16) == STREAM_K:
        return False
    return cdiv(m, tile16[1]) * tile_split(tile16) == cdiv(m, cfg8[1]) * tile_split(cfg8)


def nested_dual_gemm_rs(
    x2d: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    quant: tuple[torch.Tensor, torch.Tensor],
    tile16: tuple[int, ...],
    cfg8: tuple[int, ...],
    pdl: bool = True,
) -> torch.Tensor:
    """Writes ``x2d @ W.T + bias`` into ``out``: W from both planes if ``mode[0] == 0`` (tile ``tile16``), from
    the upper plane on the codes ``quant = (q, s)`` if 1 (config ``cfg8``), as a PDL launch after the kernel
    that writes ``quant`` (``act_quant``); ``pdl=False``: a plain launch, for codes written before the kernel
    before (then its waits return at once). The caller (the dispatcher) has checked operands, device and TMA
    addressing, and that ``pairable(tile16, cfg8, M)``."""
    m, k = x2d.shape
    n = upper.shape[0]
    if m == 0:
        return out
    q, s = quant
    bw = tile16[0]
    bt16, bk16, st16 = tile16[1:4]
    bt8, bk8, st8 = cfg8[1:4]
    sx = x2d.stride(0)
    descs = (*gluon_fp16.descriptors(x2d, upper, lower, tile16), *gluon_fp8.descriptors(q, upper, cfg8))
    tiles16, tiles8 = cdiv(n, bw) * cdiv(m, bt16), cdiv(n, bw) * cdiv(m, bt8)
    split16, ws16, sem16 = split_buffers(x2d, tiles16, tile_split(tile16), bw * bt16, out)
    split8, ws8, sem8 = split_buffers(x2d, tiles8, tile_split(cfg8), bw * bt8, out)
    programs16, programs8 = tiles16 * split16, tiles8 * split8
    so = out.stride(0)
    b = bias if bias is not None else out
    spec = (x2d.dtype, out.dtype, None if bias is None else bias.dtype, out.data_ptr() & 15, b.data_ptr() & 15,
            s.data_ptr() & 15, n & 15, k & 15, so & 15, sx & 15, n == 1, so == 1, ws16.data_ptr() & 15,
            sem16.data_ptr() & 15, ws8.data_ptr() & 15, sem8.data_ptr() & 15)
    num_warps = bw // 16
    launch(
        nested_dual_rs_kernel, max(programs16, programs8),
        (*descs, out, b, mode, s, ws16, sem16, ws8, sem8, m, n, k, so, 2.0**scale_exp,
         2.0 ** (FP8_WEIGHT_SCALE_EXP + scale_exp), programs16, programs8),
        dict(HAS_BIAS=bias is not None, BLOCK_W=bw, GROUP=8, NUM_WARPS=num_warps, BLOCK_T16=bt16, BLOCK_K16=bk16,
             STAGES16=st16, SPLIT16=split16, BLOCK_T8=bt8, BLOCK_K8=bk8, STAGES8=st8, SPLIT8=split8),
        num_warps, 1, spec, pdl=pdl,
    )
    return out
