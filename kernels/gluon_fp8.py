"""NestedFP8 GEMM for Hopper in Gluon: E4M3 wgmma on the upper plane, both operands from shared memory.

``y = (xq @ upper.T) * (s_x * 2**(-8 + scale_exp)) + bias`` on activations already quantized per
token (``xq`` E4M3 codes, ``s_x`` fp32 scales: ``triton_fp8.act_quant``, or the FP16 launch with
``quant_out``), computed swap-AB as ``y.T = W8 @ xq.T``: the upper-plane tile [BLOCK_W, BLOCK_K] is
wgmma's A operand and the token tile [BLOCK_T, BLOCK_K] its B operand, both K-major in shared memory
(8-bit wgmma takes no other operand order), so a decode batch pays for a 16-wide token tile, not 64.

Why: at M <= 64 the Triton FP8 op reached only 1.35-1.40x of cuBLAS FP16 in CUDA graphs while it reads
half the weight bytes (docs/BENCHMARKS.md, "Kernels v6"); with this kernel and PDL, 1.54x ("Kernels v7").
The Gluon FP16 kernel's structure (``kernels.gluon_fp16``: a 1-warp TMA producer, a ring of
mbarrier-guarded stages, async wgmma) came within a few percent of cuBLAS's bandwidth at M = 1; here
it reads one byte per weight and merges nothing, so the consumer only waits, issues wgmma and
releases slots.

Partitions (``gl.warp_specialize``): a 1-warp TMA worker fills a STAGES-deep ring with the token tile
and the weight tile; the default partition (4 or 8 warps: one or two consumer warpgroups, 64 weight
rows each) issues each step's wgmma asynchronously, waits until only that one is in flight, and
then releases the slot the previous step's MMA read. So one MMA stays in flight while the next
step's operands are awaited, as in the FP16 kernel, but nothing has to be loaded into registers.

Split-K (``split_k`` > 1, for layers with fewer weight tiles than SMs, e.g. 8B.o at N = 4096: 64 tiles
of 64 rows): ``split_k`` programs per tile, each over a contiguous slice of K; each publishes its fp32
partial tile, and the last to arrive at the tile's semaphore sums all of them in a fixed order, runs
the epilogue, and resets the semaphore: the mechanism and the buffers of ``kernels.split_k``.

Mode: the kernel reads the one-element int32 ``mode`` on the device first and exits unless it is 1 (FP8).

Programmatic dependent launch (``pdl=True``): the kernel may start while the kernel before it, which
quantizes x (or, for ``nestedfp::linear_prequantized``, is the idle FP16 launch after the caller's
quantization), still runs (that kernel lets it start at once: ``gdc_launch_dependents``). The TMA worker
requests the weight tiles of the ring's first pass, then waits for that kernel (``griddepcontrol.wait``)
before it requests x's codes; the consumers wait too before they read x's scales, and so does the FP16-mode
exit, so the next kernel in the stream still runs after both. At decode the quantization took about as
long as a fifth of the GEMM (docs/BENCHMARKS.md, "Kernels v7"); this hides it behind the weight stream.

Epilogue: ``acc * (s_x * w_scale)`` then ``+ bias``, cast to y's dtype: the association of
``triton_fp8.nested_fp8_kernel``. The fp32 sums differ from that kernel's (another MMA order),
so the two agree to GEMM rounding, not bit for bit.

    python -m kernels.gluon_fp8 --out $OUT/gluon_fp8.json     # checks, then times (on an H200)

The op (``kernels.triton_dispatch``) runs it where ``kernels/gluon_fp8_tiles_h200.json`` has a config, after
``act_quant`` (as a PDL launch, unless an entry from M = 512 up says otherwise); the table comes from this
module's sweep (``python -m kernels.tuning --gluon-fp8-table``), which times that pair against ``act_quant`` +
the Triton FP8 GEMM, and from M = 512 also against ``act_quant`` + cuBLASLt's and as eager calls.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from kernels import gluon_common as common
from kernels.fast_launch import TmaArg, cdiv, launch
from kernels.gluon_common import gl, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from kernels.nested_format import FP8_WEIGHT_SCALE_EXP
from kernels.split_k import split_buffers

__all__ = ["GluonUnavailable", "config_problem", "nested_fp8_gemm_rs", "nested_fp8_rs_kernel", "smem_bytes"]
GluonUnavailable = common.GluonUnavailable  # what the wrapper raises off Hopper, as kernels.gluon_fp16's
_IMPORT_ERROR = common.IMPORT_ERROR  # the name kernels.gluon_sass reads of either kernel module


@common.jit
def _load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, off_w, off_t, k_lo, k_steps,
                    STAGES: gl.constexpr, BLOCK_K: gl.constexpr, PDL: gl.constexpr):
    """TMA producer: fills slot i % STAGES once the MMA that read its previous contents retired.
    Out-of-range rows (tokens >= M, weight rows >= N) and K columns arrive as zeros. With PDL the
    weights of the ring's first pass are requested before the kernel before (which writes x's codes)
    has finished: they do not depend on it."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    first = 0
    if PDL:
        first = gl.minimum(k_steps, STAGES)
        for i in range(first):
            s, bar = common.claim_slot(ready, empty, i, STAGES, nbytes)  # armed for both tiles
            tma.async_copy_global_to_shared(w_desc, [off_w, (k_lo + i) * BLOCK_K], bar, w_bufs.index(s))
        common.gdc_wait()
        for i in range(first):
            tma.async_copy_global_to_shared(x_desc, [off_t, (k_lo + i) * BLOCK_K], ready.index(i), x_bufs.index(i))
    for i in range(first, k_steps):
        s, bar = common.claim_slot(ready, empty, i, STAGES, nbytes)
        k = (k_lo + i) * BLOCK_K
        tma.async_copy_global_to_shared(w_desc, [off_w, k], bar, w_bufs.index(s))
        tma.async_copy_global_to_shared(x_desc, [off_t, k], bar, x_bufs.index(s))


@common.jit
def _epilogue(acc, acc_layout: gl.constexpr, y_ptr, xs_ptr, bias_ptr, M, N, stride_ym, off_w, off_t, w_scale,
              HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, NUM_WARPS: gl.constexpr):
    """y[t, w] = acc[w, t] * (s_x[t] * w_scale) + bias[w], in y's dtype."""
    toks = off_t + gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, acc_layout))
    x_scale = gl.load(xs_ptr + toks, mask=toks < M, other=0.0)
    acc = acc * (x_scale * w_scale)[None, :]  # the association of triton_fp8.nested_fp8_kernel
    common.store_transposed(acc, acc_layout, y_ptr, bias_ptr, M, N, stride_ym, off_w, off_t, HAS_BIAS, BLOCK_W,
                            BLOCK_T, NUM_WARPS)


@common.jit
def _mma_partition(x_bufs, w_bufs, ready, empty, y_ptr, xs_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, stride_ym,
                   off_w, off_t, tile, pid_k, k_steps, w_scale, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr,
                   BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, SPLIT_K: gl.constexpr, NUM_WARPS: gl.constexpr,
                   PDL: gl.constexpr):
    """The consumer warpgroup(s): async SS wgmma over this program's K steps, then the epilogue
    (after the split-K reduction, in the program that arrives last)."""
    if PDL:
        common.gdc_wait()  # the epilogue reads x's scales, written by the kernel before
    # One 8-bit wgmma: 16 rows per warp (64 per warpgroup) x BLOCK_T tokens x 32 of K.
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                         instr_shape=[16, BLOCK_T, 32])
    acc = gl.zeros([BLOCK_W, BLOCK_T], gl.float32, acc_layout)
    for i in range(k_steps):
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        w = w_bufs.index(s)
        x = x_bufs.index(s)
        acc = warpgroup_mma(w, x.permute((1, 0)), acc, use_acc=i > 0, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        # MMA i-1 has retired: the slot it read is free.
        mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

    if SPLIT_K == 1:
        _epilogue(acc, acc_layout, y_ptr, xs_ptr, bias_ptr, M, N, stride_ym, off_w, off_t, w_scale, HAS_BIAS,
                  BLOCK_W, BLOCK_T, NUM_WARPS)
    else:
        total, last = common.split_k_sum(acc, acc_layout, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K, BLOCK_W, BLOCK_T)
        if last:
            _epilogue(total, acc_layout, y_ptr, xs_ptr, bias_ptr, M, N, stride_ym, off_w, off_t, w_scale, HAS_BIAS,
                      BLOCK_W, BLOCK_T, NUM_WARPS)


@common.jit
def gemm(x_desc, w_desc, y_ptr, xs_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, K, stride_ym, w_scale,
         HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, BLOCK_K: gl.constexpr,
         STAGES: gl.constexpr, GROUP: gl.constexpr, SPLIT_K: gl.constexpr, NUM_WARPS: gl.constexpr,
         PDL: gl.constexpr):
    """One program's tile (and split) in FP8 mode: the kernel past its mode test, which ``kernels.gluon_dual``
    runs too."""
    # Tiles in grouped order: GROUP weight blocks walk the token blocks together, so each weight block
    # comes from HBM about once.
    tile, pid_k, k_lo, k_steps = common.split_tile(K, BLOCK_K, SPLIT_K)
    off_w, off_t = common.grouped_tile(tile, M, N, BLOCK_W, BLOCK_T, GROUP)

    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_T, BLOCK_K], x_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_W, BLOCK_K], w_desc.layout)
    ready, empty = common.ring_barriers(STAGES)

    gl.warp_specialize([
        (_mma_partition, (x_bufs, w_bufs, ready, empty, y_ptr, xs_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, stride_ym,
                          off_w, off_t, tile, pid_k, k_steps, w_scale, HAS_BIAS, STAGES, BLOCK_W, BLOCK_T, SPLIT_K,
                          NUM_WARPS, PDL)),
        (_load_partition, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, off_w, off_t, k_lo, k_steps, STAGES,
                           BLOCK_K, PDL)),
    ], common.LOAD_WARPS, common.LOAD_REGS)


@common.jit(do_not_specialize=["M"])
def nested_fp8_rs_kernel(
    x_desc, w_desc, y_ptr, xs_ptr, bias_ptr, mode_ptr, ws_ptr, sem_ptr,
    M, N, K, stride_ym, w_scale,
    HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr, GROUP: gl.constexpr, SPLIT_K: gl.constexpr, NUM_WARPS: gl.constexpr,
    PDL: gl.constexpr,
):
    if gl.load(mode_ptr) != 1:
        if PDL:
            common.gdc_wait()
        return
    gemm(x_desc, w_desc, y_ptr, xs_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, K, stride_ym, w_scale, HAS_BIAS, BLOCK_W,
         BLOCK_T, BLOCK_K, STAGES, GROUP, SPLIT_K, NUM_WARPS, PDL)


def smem_bytes(block_w: int, block_t: int, block_k: int, stages: int) -> int:
    """The ring (token tile + weight tile per stage, 1 byte per element), 2 KiB per consumer warpgroup
    for the epilogue's layout conversion (Triton 3.6 converts the output tile through a 64 x 16 x 2-byte
    buffer per warpgroup, whatever block_t), and 512 bytes for barriers and the split-K broadcast.
    Compiled for sm_90, every tile of ``TILES`` in fp16 / bf16, with and without bias and split-K,
    used 132-420 bytes less than this."""
    return stages * (block_t + block_w) * block_k + 32 * block_w + 512


def config_problem(block_w: int, block_t: int, block_k: int, stages: int) -> str | None:
    """Why a tile config cannot work on sm_90 (None if it should): checked before compiling."""
    tile = (block_w, block_t, block_k, stages)
    return common.tile_problem(tile, (64, 128, 256), smem_bytes(*tile))


_FP8 = (torch.float8_e4m3fn, torch.uint8)  # the upper plane: as nested_split stores it, or its bytes
_OUT = (torch.float16, torch.bfloat16)


def _check(xq, xs, upper, bias, out, tile, split_k) -> None:
    if xq.dtype != torch.float8_e4m3fn or upper.dtype not in _FP8:
        raise TypeError(f"xq must be float8_e4m3fn and upper float8_e4m3fn or uint8, got {xq.dtype}, {upper.dtype}")
    if xq.dim() != 2 or upper.dim() != 2 or xq.shape[1] != upper.shape[1]:
        raise ValueError(f"shape mismatch: xq {tuple(xq.shape)}, upper {tuple(upper.shape)}")
    m, n = xq.shape[0], upper.shape[0]
    if xs.dtype != torch.float32 or xs.numel() != m or (m and xs.reshape(-1).stride(0) != 1):
        raise ValueError(f"xs must hold M = {m} contiguous fp32 scales, got {xs.dtype} {tuple(xs.shape)}")
    if not upper.is_contiguous():
        raise ValueError("upper must be contiguous")
    if out.shape != (m, n) or out.dtype not in _OUT or out.stride(1) != 1:
        raise ValueError(f"out must be [{m}, {n}] float16 / bfloat16 with unit column stride, got "
                         f"{out.dtype} {tuple(out.shape)} strides {out.stride()}")
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous [{n}] vector, got {tuple(bias.shape)}")
    if split_k < 1:
        raise ValueError(f"split_k must be >= 1, got {split_k}")
    common.check_launch("nested_fp8_gemm_rs", tile, config_problem(*tile), xq, upper)


def descriptors(xq: torch.Tensor, upper: torch.Tensor, tile: tuple[int, ...]) -> tuple[TmaArg, TmaArg]:
    """The kernel's TMA descriptors for ``tile``: the codes' [block_t, block_k] tiles, the upper plane's
    [block_w, block_k] tiles read as E4M3 whatever its stored dtype."""
    (m, k), n = xq.shape, upper.shape[0]
    block_w, block_t, block_k = tile[:3]
    return (TmaArg(xq, (m, k), (xq.stride(0), 1), (block_t, block_k),
                   common.smem_layout((block_t, block_k), "float8e4nv")),
            TmaArg(upper, (n, k), (k, 1), (block_w, block_k), common.smem_layout((block_w, block_k), "float8e4nv"),
                   torch.float8_e4m3fn if upper.dtype == torch.uint8 else None))


def nested_fp8_gemm_rs(
    xq: torch.Tensor,
    xs: torch.Tensor,
    upper: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    tile: tuple[int, int, int, int] = (64, 16, 128, 4),
    checked: bool = False,
    out_dtype: torch.dtype | None = None,
    split_k: int = 1,
    pdl: bool = False,
) -> torch.Tensor:
    """Writes ``(xq @ upper.T) * (xs * 2**(-8 + scale_exp)) + bias`` into ``out`` if ``mode[0] == 1``;
    otherwise ``out`` is returned as it was.

    ``xq`` [M, K] float8_e4m3fn and ``xs`` [M] fp32: per-token codes and scales (``act_quant``).
    ``upper`` [N, K]: the E4M3 plane (float8_e4m3fn, or its bytes as uint8). ``out``: allocated in
    ``out_dtype`` (float16 if None) when not given. ``tile`` = (block_w, block_t, block_k, stages).
    ``split_k`` > 1: that many programs per tile over slices of K (``kernels.split_k``; one program
    per tile where its buffers cannot be had, e.g. inside a capture that would have to allocate them).
    ``checked``: the caller has checked operands, device, tile and TMA addressing.
    ``pdl``: launched as a programmatic dependent of the kernel before, which writes ``xq`` and ``xs``
    (the FP16 launch or ``act_quant``) or runs after the kernel that did: the weight prefetch overlaps that
    kernel (module docstring).
    Raises ``GluonUnavailable`` off Hopper or without Gluon; ``TypeError`` / ``ValueError`` for
    operands or tiles that cannot work.
    """
    m, n = xq.shape[0], upper.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype or torch.float16, device=xq.device)
    if not checked:
        _check(xq, xs, upper, bias, out, tile, split_k)
    if m == 0:
        return out
    launch(nested_fp8_rs_kernel, *gemm_launch(xq, xs, upper, mode, scale_exp, bias, out, tile, split_k, pdl))
    return out


def gemm_launch(xq: torch.Tensor, xs: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
                bias: torch.Tensor | None, out: torch.Tensor, tile: tuple[int, ...], split_k: int,
                pdl: bool) -> tuple:
    """``nested_fp8_gemm_rs``'s launch as ``fast_launch.launch`` takes it after the kernel: (grid, args,
    constexprs, warps, stages, specialization, PDL). Shared with ``kernels.eager_fp8``, which prepares it once
    per shape."""
    (m, k), n = xq.shape, upper.shape[0]
    block_w, block_t, block_k, stages = tile
    tiles = cdiv(n, block_w) * cdiv(m, block_t)
    split_k, ws, sem = split_buffers(xq, tiles, split_k, block_w * block_t, out)
    descs = descriptors(xq, upper, tile)
    so = out.stride(0)
    num_warps = block_w // 16
    b = bias if bias is not None else out
    # What Triton specializes on beyond the constexprs: dtypes, 16-byte alignment of every pointer,
    # ints (N, K, stride) divisible by 16 or equal to 1 (M is not specialized).
    spec = (out.dtype, None if bias is None else bias.dtype, out.data_ptr() & 15, xs.data_ptr() & 15,
            b.data_ptr() & 15, mode.data_ptr() & 15, ws.data_ptr() & 15, sem.data_ptr() & 15,
            n & 15, k & 15, so & 15, n == 1, so == 1)
    w_scale = 2.0 ** (FP8_WEIGHT_SCALE_EXP + scale_exp)
    return (tiles * split_k, (*descs, out, xs, b, mode, ws, sem, m, n, k, so, w_scale),
            dict(HAS_BIAS=bias is not None, BLOCK_W=block_w, BLOCK_T=block_t, BLOCK_K=block_k, STAGES=stages,
                 GROUP=8, SPLIT_K=split_k, NUM_WARPS=num_warps, PDL=pdl), num_warps, 1, spec, pdl)


# ----------------------------------------------------------------------------------------------------
# Check and time on the GPU (Triton-tutorial style): python -m kernels.gluon_fp8 --out $OUT/gluon_fp8.json

Config = tuple[int, int, int, int, int]  # block_w, block_t, block_k, stages, split_k

# The tiles the H200 run times (per M, those of configs_for). Every one compiled offline for sm_90
# (python -m kernels.gluon_sass --kind fp8) without spills, SS-form QGMMA, one MMA group in flight.
# Every config runs one CTA per SM (255 registers x 8 warps, or 168 x 12), so the ring depth alone sets
# the bytes in flight per SM: at M <= 16 the kernel streams weights, so the rings are deep (80-200 KB)
# and block_k is large (fewer barrier round trips per byte). The 128 x 256 tiles hold 128 fp32 accumulators
# per thread within 168 registers: they spill 24 bytes outside the K loop (10 STL/LDL), and from M = 512 up
# they were still the fastest on most shapes (docs/BENCHMARKS.md, "Kernels v16").
TILES: tuple[tuple[int, int, int, int], ...] = (
    (64, 16, 128, 8), (64, 16, 256, 5), (64, 16, 256, 10), (128, 16, 128, 10), (128, 16, 256, 5),
    (64, 32, 256, 6), (128, 32, 128, 8),
    (64, 64, 128, 8), (64, 64, 256, 5), (128, 64, 128, 6),
    (64, 128, 128, 6), (64, 128, 256, 4), (128, 128, 128, 5), (128, 128, 128, 6),
    (64, 256, 64, 8), (64, 256, 128, 4), (128, 256, 64, 8), (128, 256, 128, 4),
)
SPLITS = (2, 4)  # split-K candidates, for 64-row tiles of <= 64 tokens (larger partial tiles spilled)
CHECK_TOL = 5e-3  # relative Frobenius error against the reference on the same codes (kernels.bench: fp8 5e-3)


def _splittable(t: tuple[int, int, int, int]) -> bool:
    return t[0] == 64 and t[1] <= 64


def check_configs(tiles=TILES) -> list[Config]:
    """Every config the sweep may time: each tile without split-K, the splittable ones with each split."""
    return [(*t, 1) for t in tiles] + [(*t, s) for t in tiles if _splittable(t) for s in SPLITS]


def configs_for(m: int, n: int, sms: int, tiles=TILES) -> list[Config]:
    """The configs worth timing at this M: token tiles of the power of two that covers M, or half of it;
    split-K for 64-row tiles where the grid is short of a few waves (one CTA per SM: 8B.qkv at N = 6144
    has 96 tiles of 64 rows for 132 SMs, 70B.qkv 160, 8B.o and 8B.down 64)."""
    from kernels.tuning import token_cap

    cap = min(256, token_cap(m))
    out: list[Config] = []
    for t in tiles:
        if t[1] not in (cap, cap // 2):
            continue
        out.append((*t, 1))
        grid = cdiv(n, t[0]) * cdiv(m, t[1])
        if _splittable(t):
            out.extend((*t, s) for s in SPLITS if grid * s <= 5 * sms)
    return out


def _run(xq, xs, nw, mode, c: Config, bias=None, out=None, pdl=False):
    return nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, bias, out, c[:4], split_k=c[4], pdl=pdl)


def _reference(xq, xs, nw, bias, dtype):
    """kernels.reference.fp8_linear_reference on given codes: fp32 product, acc * (s_x * s_w) + bias."""
    acc = xq.float() @ nw.upper.float().t()
    y = acc * (xs.view(-1, 1) * nw.fp8_weight_scale)
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


def check(configs: list[Config] | None = None, verbose: bool = True) -> list[dict]:
    """Every config against ``kernels.reference`` on ragged shapes, output poisoned with NaN: M = 1, 7, 16,
    33, 64; N not a multiple of the tile; bias + pre-scale + bf16; a second (direct) launch writes the same;
    mode 0 leaves ``out`` untouched. Also recorded, not required: whether ``act_quant``'s codes equal
    ``quantize_per_token``'s and the codes' product against ``nested_linear(x, nw, "fp8")`` (``ref_err``)."""
    from kernels.bench import make_weight, rel_err
    from kernels.ops import new_mode_tensor
    from kernels.reference import nested_linear, quantize_per_token
    from kernels.triton_fp8 import act_quant

    configs = configs or check_configs()
    m8, m16 = new_mode_tensor("cuda", "fp8"), new_mode_tensor("cuda", "fp16")
    # N and K multiples of 16 (as in the Llama shapes: one compiled specialization per dtype and bias,
    # about 3 compiles per config), N not a multiple of 64 or 128 in three cases, K not of 128 or 256 in one.
    cases = [((1, 4096, 4096), torch.float16, False, False), ((7, 208, 512), torch.float16, True, False),
             ((16, 3024, 2048), torch.bfloat16, True, True), ((33, 1008, 1056), torch.float16, False, False),
             ((64, 4096, 1024), torch.float16, True, False)]
    rows = []
    for (m, n, k), dtype, with_bias, prescale in cases:
        nw = make_weight(n, k, amax=4.0 if prescale else 0.25)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
        xq, xs = act_quant(x, m8)
        ref = _reference(xq, xs, nw, b, dtype)
        e2e = rel_err(ref, nested_linear(x, nw, "fp8", bias=b))  # the codes' product against the op's reference
        rq, rs = quantize_per_token(x)
        codes = bool(torch.equal(xq.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(xs, rs.flatten()))
        for c in configs:
            row = dict(m=m, n=n, k=k, dtype=str(dtype), bias=with_bias, scale_exp=nw.scale_exp, cfg=c, ref_err=e2e,
                       codes_equal=codes)
            try:
                out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                _run(xq, xs, nw, m8, c, b, out)
                torch.cuda.synchronize()
                row["rel_err"] = rel_err(out, ref)
                again = torch.full_like(out, float("nan"))
                _run(xq, xs, nw, m8, c, b, again)  # the direct launch path
                torch.cuda.synchronize()
                row["direct_equal"] = bool(torch.equal(out, again))
                keep = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                _run(xq, xs, nw, m16, c, b, keep)
                torch.cuda.synchronize()
                row["fp16_mode_untouched"] = bool(torch.isnan(keep).all())
                tol = CHECK_TOL * (4 if dtype == torch.bfloat16 else 1)
                row["ok"] = row["rel_err"] < tol and row["direct_equal"] and row["fp16_mode_untouched"]
            except Exception as ex:  # noqa: BLE001 - recorded, so that the other configs still run
                row.update(ok=False, error=f"{type(ex).__name__}: {str(ex)[:400]}")
            rows.append(row)
        if verbose:
            got = rows[-len(configs):]
            print(f"check M={m} N={n} K={k} {dtype} bias={with_bias} scale_exp={nw.scale_exp}: "
                  f"{sum(r['ok'] for r in got)}/{len(configs)} ok (codes vs reference {e2e:.2e})", flush=True)
    return rows


def sweep(shapes: dict, ms: tuple[int, ...], bad: set, rep_ms: int, budget_s: float, t0: float, write,
          tiles=TILES) -> list[dict]:
    """Per M (smallest first, so that a spent budget cuts the large M), per shape: cuBLAS FP16, the Triton
    FP8 GEMM on the same pre-quantized x (its table config), cuBLASLt FP8 (``torch._scaled_mm`` on the
    plane, as ``kernels.cublaslt_fp8`` calls it) and each Gluon config, each checked before it is timed."""
    from kernels import cublaslt_fp8
    from kernels.bench import make_weight, rel_err
    from kernels.gluon_check import bench_us, time_configs
    from kernels.nested_format import nested_merge
    from kernels.ops import new_mode_tensor
    from kernels.triton_fp8 import act_quant, nested_fp8_gemm
    from kernels.tuning import get_config

    mode = new_mode_tensor("cuda", "fp8")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    weights = {}
    for name, (n, k) in shapes.items():  # all resident: about 4.3 GB for the 8 Llama shapes
        nw = make_weight(n, k)
        weights[name] = (nw, nested_merge(nw))
    rows = []
    for m in ms:
        for name, (n, k) in shapes.items():
            if time.time() - t0 > budget_s:
                print(f"budget spent before {name} M={m}", flush=True)
                return rows
            nw, w16 = weights[name]
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xq, xs = act_quant(x, mode)
            ref = _reference(xq, xs, nw, None, torch.float16)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m)
            r["cublas_us"] = bench_us(functools.partial(torch.matmul, x, w16.t()), rep_ms)
            cfg = get_config("fp8", n, k, m)
            r["triton_cfg"] = cfg.to_dict()
            triton_fp8 = functools.partial(nested_fp8_gemm, x, nw.upper, mode, nw.scale_exp, out=out, config=cfg,
                                           quantized=(xq, xs))
            out.fill_(float("nan"))
            triton_fp8()
            r["triton_rel_err"] = rel_err(out, ref)
            r["triton_fp8_us"] = bench_us(triton_fp8, rep_ms)
            r["triton_ratio"] = r["cublas_us"] / r["triton_fp8_us"]
            try:
                lt = functools.partial(cublaslt_fp8.scaled_mm_into, xq, xs, nw.upper, nw.scale_exp, None, out)
                lt()
                r["cublaslt_fp8_us"] = bench_us(lt, rep_ms)
                r["cublaslt_ratio"] = r["cublas_us"] / r["cublaslt_fp8_us"]
            except Exception as ex:  # noqa: BLE001 - torch refuses some shapes (cublaslt_fp8.refuse)
                r["cublaslt_fp8_error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            configs = [c for c in configs_for(m, n, sms, tiles) if c not in bad]
            ok = time_configs(r, configs, functools.partial(_run, xq, xs, nw, mode, out=out), out, ref, CHECK_TOL,
                              rep_ms)
            if ok:
                r["vs_triton"] = r["triton_fp8_us"] / r["best_us"]
                _time_op(r, x, xq, xs, nw, mode, cfg, out, ref, rep_ms)
            rows.append(r)
            nan = float("nan")
            print(f"{time.time() - t0:5.0f}s {name:12s} M={m:4d} cuBLAS16 {r['cublas_us']:7.1f} tritonFP8 "
                  f"{r['triton_fp8_us']:7.1f} cuBLASLt8 {r.get('cublaslt_fp8_us', nan):7.1f} gluon "
                  f"{r.get('best_us', nan):7.1f} x{r.get('ratio', 0):.3f} (triton x"
                  f"{r['triton_ratio']:.3f}) {r.get('best_cfg')} [{ok}/{len(configs)} ok]"
                  f" | op: triton {r.get('op_triton_us', nan):6.1f} gluon {r.get('op_gluon_us', nan):6.1f}"
                  f" pdl {r.get('op_gluon_pdl_us', nan):6.1f} (err {r.get('op_gluon_pdl_rel_err', nan):.1e})"
                  f" cuBLASLt {r.get('op_cublaslt_us', nan):6.1f} | eager: gluon {r.get('op_eager_gluon_us', nan):6.1f}"
                  f" without {r.get('op_eager_without_us', nan):6.1f}",
                  flush=True)
            write()
    return rows


def _time_op(r: dict, x, xq, xs, nw, mode, cfg, out, ref, rep_ms: int) -> None:
    """The op's FP8 path at this M, a launch that quantizes x and then the GEMM, as the dispatcher would
    run it: the Triton GEMM after ``act_quant`` (or with the quantization fused, as its config says),
    cuBLASLt's after ``act_quant`` (the eager path from ``LARGE_M_THRESHOLD``, where torch takes the shape),
    and the best Gluon config after ``act_quant``, launched plainly and with PDL. The PDL pair is first
    checked with x's codes and scales poisoned, so a GEMM that read them before the quantization
    finished fails (``op_gluon_pdl_rel_err``)."""
    from kernels import cublaslt_fp8
    from kernels.bench import graphed, rel_err
    from kernels.gluon_check import bench_us
    from kernels.triton_fp8 import act_quant, nested_fp8_gemm
    from kernels.tuning import FP8_PDL_CHOICE_FROM_M

    def gluon_op(pdl: bool):
        return lambda: (act_quant(x, mode, (xq, xs)), _run(xq, xs, nw, mode, r["best_cfg"], out=out, pdl=pdl))

    r["op_triton_us"] = bench_us(functools.partial(nested_fp8_gemm, x, nw.upper, mode, nw.scale_exp, out=out,
                                                   config=cfg), rep_ms)
    replay = graphed(gluon_op(True))
    xq.zero_()
    xs.fill_(float("nan"))
    out.fill_(float("nan"))
    replay()
    r["op_gluon_pdl_rel_err"] = rel_err(out, ref)
    if r["op_gluon_pdl_rel_err"] < CHECK_TOL:
        r["op_gluon_us"] = bench_us(gluon_op(False), rep_ms)
        r["op_gluon_pdl_us"] = bench_us(gluon_op(True), rep_ms)
        r["op_ratio"] = r["cublas_us"] / r["op_gluon_pdl_us"]
        r["op_triton_ratio"] = r["cublas_us"] / r["op_triton_us"]
    if "cublaslt_fp8_us" in r:  # torch took the shape (sweep)
        r["op_cublaslt_us"] = bench_us(lambda: (act_quant(x, mode, (xq, xs)), cublaslt_fp8.scaled_mm_into(
            xq, xs, nw.upper, nw.scale_exp, None, out)), rep_ms)
    if "op_gluon_us" in r and r["m"] >= FP8_PDL_CHOICE_FROM_M:
        _time_eager_op(r, x, nw, mode)


def _time_eager_op(r: dict, x, nw, mode) -> None:
    """The op as an eager call runs it (``nested_linear_cuda``, host pick: the host enqueues every launch,
    allocates x's codes, encodes their TMA descriptor), with this row's best Gluon config (PDL or not, as
    its graph timings chose) and without one (the Triton kernel, or from ``LARGE_M_THRESHOLD`` cuBLASLt).
    Why: past the largest CUDA-graph capture vLLM runs layers eagerly, and where the GPU work is short the
    host's enqueue sets the time (8B.o at M = 1024: 65.7 us eager against 35.9 us in a graph: "Kernels v16")."""
    from unittest import mock

    from kernels import triton_dispatch
    from kernels.bench import bench

    cfg = (*r["best_cfg"], int(r["op_gluon_pdl_us"] < r["op_gluon_us"]))
    for key, g8 in (("op_eager_gluon_us", cfg), ("op_eager_without_us", None)):
        with mock.patch.object(triton_dispatch, "use_gluon_fp8", lambda x2d, upper, g8=g8: g8):
            r[key] = bench(lambda: triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp))


def _geomeans(rows: list[dict]) -> dict:
    """Geomeans over the rows where a Gluon config passed, per M and over M <= 64 (the decode target,
    >= 1.6): cuBLAS FP16 time over the best Gluon config's (``ratio``), the Triton FP8 GEMM's and
    cuBLASLt FP8's (where torch took the shape), and the Triton time over the best Gluon's (``vs_triton``)."""
    import math

    def gm(sel: list[dict]) -> dict:
        g: dict = dict(rows=len(sel))
        for key in ("ratio", "triton_ratio", "cublaslt_ratio", "vs_triton", "op_ratio", "op_triton_ratio"):
            vals = [r[key] for r in sel if key in r]
            if vals:
                g[key] = math.exp(sum(math.log(v) for v in vals) / len(vals))
        return g

    ok = [r for r in rows if "ratio" in r]
    out = {str(m): gm([r for r in ok if r["m"] == m]) for m in sorted({r["m"] for r in ok})}
    if any(r["m"] <= 64 for r in ok):
        out["m<=64"] = gm([r for r in ok if r["m"] <= 64])
    return out


def graph_check(configs: list[Config]) -> list[dict]:
    """Each config captured in a CUDA graph in FP8 mode: a replay equals the eager result; after a flip to
    FP16 (``set_host_mode``) a replay leaves a poisoned ``out`` untouched; after the flip back it writes again."""
    from kernels.bench import make_weight
    from kernels.ops import new_mode_tensor, set_host_mode
    from kernels.triton_fp8 import act_quant

    m, n, k = 7, 1008, 1024
    nw = make_weight(n, k)
    mode = new_mode_tensor("cuda", "fp8")
    xq, xs = act_quant(torch.randn(m, k, device="cuda", dtype=torch.float16), mode)
    rows = []
    for c in configs:
        row = dict(m=m, n=n, k=k, cfg=c)
        try:
            eager = _run(xq, xs, nw, mode, c)
            out = torch.full_like(eager, float("nan"))
            _run(xq, xs, nw, mode, c, out=out)  # warm (compiled, split-K buffers exist)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                _run(xq, xs, nw, mode, c, out=out)
            out.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            row["fp8_replay_equal"] = bool(torch.equal(out, eager))
            set_host_mode(mode, "fp16")
            out.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            row["fp16_replay_untouched"] = bool(torch.isnan(out).all())
            set_host_mode(mode, "fp8")
            g.replay()
            torch.cuda.synchronize()
            row["flip_back_equal"] = bool(torch.equal(out, eager))
            row["ok"] = row["fp8_replay_equal"] and row["fp16_replay_untouched"] and row["flip_back_equal"]
        except Exception as ex:  # noqa: BLE001
            set_host_mode(mode, "fp8")
            row.update(ok=False, error=f"{type(ex).__name__}: {str(ex)[:400]}")
        rows.append(row)
    print(f"graph mode flips: {sum(r['ok'] for r in rows)}/{len(rows)} ok", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    import triton

    from kernels.tuning import LLAMA_SHAPES

    ap = argparse.ArgumentParser(description="Check, then time, the Gluon NestedFP8 GEMM on an H200")
    ap.add_argument("--out", default="gluon_fp8.json")
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES))
    ap.add_argument("--ms", default="1,16,64,128,256")
    ap.add_argument("--tiles", default=None, help='"bw,bt,bk,stages;..." instead of TILES')
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=170,
                    help="start no new timing row after this many seconds from the start (checks included)")
    ap.add_argument("--check-only", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.time()
    tiles = tuple(tuple(int(v) for v in t.split(",")) for t in a.tiles.split(";")) if a.tiles else TILES
    for t in tiles:
        problem = config_problem(*t)
        if problem:
            raise SystemExit(f"tile {t}: {problem}")
    shapes = {s: LLAMA_SHAPES[s] for s in a.shapes.split(",")}
    ms = tuple(sorted(int(v) for v in a.ms.split(",")))
    res: dict = dict(meta=dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                               triton=triton.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                               sms=torch.cuda.get_device_properties(0).multi_processor_count,
                               tiles=[list(t) for t in tiles], splits=list(SPLITS), ms=list(ms), rep_ms=a.rep_ms,
                               budget_s=a.budget_s))

    def write():
        res["meta"]["elapsed_s"] = round(time.time() - t0, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))

    configs = check_configs(tiles)
    res["checks"] = check(configs)
    write()
    res["graph_checks"] = graph_check(configs)
    failed = [r for r in res["checks"] + res["graph_checks"] if not r["ok"]]
    bad = {tuple(r["cfg"]) for r in failed}
    for r in failed[:5]:
        print("FAILED:", r, flush=True)
    print(f"{len(configs) - len(bad)} of {len(configs)} configs pass every check ({time.time() - t0:.0f} s)",
          flush=True)
    res["meta"]["configs_failed"] = sorted(bad)
    write()
    if not a.check_only:
        res["rows"] = sweep(shapes, ms, bad, a.rep_ms, a.budget_s, t0, write, tiles)
        res["geomeans_vs_cublas_fp16"] = _geomeans(res["rows"])
        for m, g in res["geomeans_vs_cublas_fp16"].items():
            print(f"M {m:>5}: gluon x{g.get('ratio', 0):.3f}  triton x{g.get('triton_ratio', 0):.3f}  "
                  f"cuBLASLt x{g.get('cublaslt_ratio', 0):.3f}  gluon/triton x{g.get('vs_triton', 0):.3f}  "
                  f"| op: gluon+pdl x{g.get('op_ratio', 0):.3f} triton x{g.get('op_triton_ratio', 0):.3f}  "
                  f"({g['rows']} rows)", flush=True)
    write()
    print(f"done in {time.time() - t0:.0f} s: {a.out}", flush=True)


if __name__ == "__main__":
    main()
