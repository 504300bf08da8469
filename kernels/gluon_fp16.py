"""NestedFP16 GEMM for Hopper in Gluon: the merged weight feeds wgmma from registers (swap AB).

``y = x @ (merge(upper, lower) * 2**scale_exp).T + bias``, computed as ``y.T = W @ x.T``: the
weight takes wgmma's M slot as the register operand A, the tokens its N slot from shared memory.
Why this shape: a first Gluon design merged in a separate warpgroup into a shared-memory tile that
wgmma read back, so every weight crossed shared memory three times, and it topped out near 0.55 of
cuBLAS (docs/BENCHMARKS.md, "Kernels v3"). Here the bytes cross once:
the consumer warpgroups read the two byte planes from shared memory as 16-bit words (two K-adjacent
weights) straight into the A operand's register layout, merge in registers (``_MERGE_WORDS_ASM``:
the algorithm of ``triton_fp16._MERGE_ASM``, fed words instead of bytes) and issue wgmma on them.
One MMA stays in flight: step i's loads and merge overlap step i-1's MMA.

Partitions (``gl.warp_specialize``): a 1-warp TMA worker fills a STAGES-deep ring with the x tile
[BLOCK_T, BLOCK_K] and the two byte tiles [BLOCK_W, BLOCK_K]; the default partition (4 or 8 warps
= one or two consumer warpgroups, 64 weight rows each) merges, multiplies, and releases a slot
when the MMA that read its x tile has retired. The token tile BLOCK_T can be as thin as 16, so
decode batches do not waste a 64-row MMA.

Split-K (a fifth tile element > 1): that many programs per output tile, each over a contiguous slice
of K, summed by the last to arrive (``kernels.split_k``'s mechanism and buffers). It is for layers with
fewer 64-row weight tiles than SMs at decode. 8B.o and 8B.down have 64 tiles on 132 SMs, and split-K
took them from 0.85-0.91 to 0.95-0.96 of cuBLAS at M = 1 and 16 in CUDA graphs (docs/BENCHMARKS.md,
"Split-K in the Gluon FP16 kernel").

Stream-K (fifth element ``STREAM_K``, 0): one program per SM, each over an equal share of the K steps of
all output tiles, taken in tile order across tile borders; a tile one program covers is stored at once,
the pieces of one split between programs are summed by the last to arrive (``common.stream_k_sum``). It was
built for grids that fill their last wave badly (at M = 256, 64 x 256 tiles give 8B.qkv 96 programs on 132
SMs: docs/BENCHMARKS.md, "Where FP16 loses at M = 256"), but on the H200 it did not speed those up: with
every SM reading a different x tile, L2 looks like the limit ("Kernels v8"). The table picks it in 5 cells,
within 1.3% of the best other tile.

Mode: the kernel reads the one-element int32 ``mode`` on the device, before the partitions
fork, and exits unless it is 0 (FP16), like the other NestedFP16 kernels.
"""

from __future__ import annotations

import torch

from kernels import gluon_common as common
from kernels.fast_launch import TmaArg, cdiv, launch
from kernels.split_k import split_buffers, stream_buffers, stream_programs
from kernels.gluon_common import gl, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from kernels.triton_fp8 import FP8_MAX, FP8_MAX_RCP, MIN_ACT_SCALE, prepare
from kernels.tuning import STREAM_K, tile_split

# Shared with kernels.gluon_fp8 (they live in kernels.gluon_common); the dispatcher, the tests and
# kernels.gluon_sass read them here.
GluonUnavailable = common.GluonUnavailable
SMEM_LIMIT = common.SMEM_LIMIT
available = common.available
tma_ok = common.tma_ok
_IMPORT_ERROR = common.IMPORT_ERROR

# The merge of ``triton_fp16._MERGE_ASM`` on what one pair of wgmma A registers needs: the 16-bit
# words (2 K-adjacent bytes, zero-extended) of rows r and r + 8, upper plane $2, $3, lower $4, $5;
# out $0 = 2 FP16 weights of row r, $1 = those of row r + 8 (the bytes (l0,h0,l1,h1), (l2,h2,l3,h3)).
#   u = $2 | $3 << 16      the 4 upper bytes in one register (a mad: ptxas emits an IMAD, FMA pipe)
#   x = prmt 0xDC98        each lower byte's bit 7 replicated over its lane: x & 1 = l >> 7
#   c, t, h                as in _MERGE_ASM: c = (u ^ x) & 1, t = u - c, h = t & 0x80 | t >> 1 & 0x3F
# Why words: planes loaded as uint8 in the operand layout came in 2-byte LDS that ptxas split into
# bytes and repacked into _MERGE_ASM's 32-bit operands (7 PRMT per 4 bytes). Triton 3.6 SASS for
# sm_90, per K step and thread at BLOCK_K=64: 32 LDS.U16 + 74 integer ops (24 PRMT, 16 IMAD) here,
# 32 LDS.U16 + 178 (128 PRMT) before; at small token tiles that ALU work, not the tensor cores,
# set the step time.
_MERGE_WORDS_ASM = common.const("""
{
.reg .b32 u, x, c, t, s, h;
mad.lo.u32 u, $3, 65536, $2;
prmt.b32 x, $4, $5, 0xDC98;
lop3.b32 c, u, x, 0x01010101, 0x28;
sub.u32 t, u, c;
shr.b32 s, t, 1;
and.b32 s, s, 0x3F3F3F3F;
lop3.b32 h, t, 0x80808080, s, 0xEA;
prmt.b32 $0, $4, h, 0x5140;
prmt.b32 $1, $5, h, 0x7160;
}
""")


def _word_layout_fn(num_warps: int, block_k: int) -> gl.DistributedLinearLayout:
    """The A operand's layout (k_width=2) over the [rows, K / 2] words of a byte plane, with rows r and
    r + 8 in consecutive registers, so that the merge (pack=2) gets the words of one A register pair.

    A operand: registers (k 1, row 8, k 8, k 16, ...), lanes (k 2, k 4, row 1, 2, 4), warps (row 16, ...).
    """
    regs = [[8, 0]] + [[0, 1 << j] for j in range(2, block_k.bit_length() - 2)]
    warps = [[16 << j, 0] for j in range(num_warps.bit_length() - 1)]
    return gl.DistributedLinearLayout(regs, [[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], warps, [],
                                      [16 * num_warps, block_k // 2])


_word_layout = common.gluon.constexpr_function(_word_layout_fn) if common.gluon is not None else _word_layout_fn


@common.jit
def _load_partition(x_desc, u_desc, l_desc, x_bufs, u_bufs, l_bufs, ready, empty, off_w, off_t, k_lo, k_tiles,
                    STAGES: gl.constexpr, BLOCK_K: gl.constexpr):
    """TMA producer: fills slot i % STAGES once the MMA that read its previous contents retired."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + u_desc.block_type.nbytes + l_desc.block_type.nbytes
    for i in range(k_tiles):
        s, bar = common.claim_slot(ready, empty, i, STAGES, nbytes)
        k = (k_lo + i) * BLOCK_K
        tma.async_copy_global_to_shared(x_desc, [off_t, k], bar, x_bufs.index(s))
        tma.async_copy_global_to_shared(u_desc, [off_w, k], bar, u_bufs.index(s))
        tma.async_copy_global_to_shared(l_desc, [off_w, k], bar, l_bufs.index(s))


@common.jit
def _mma_step(x_bufs, u_bufs, l_bufs, ready, empty, acc, i, i0, STAGES: gl.constexpr, a_layout: gl.constexpr,
              word_layout: gl.constexpr):
    """One K step (the program's i-th; its output tile's first is i0): planes -> registers -> merged A
    operand; issue its MMA, retire the previous one."""
    BLOCK_W: gl.constexpr = u_bufs.shape[1]
    BLOCK_K: gl.constexpr = u_bufs.shape[2]
    # The planes' bytes as [BLOCK_W, BLOCK_K / 2] uint16 words: the same swizzle in bytes.
    words: gl.constexpr = gl.NVMMASharedLayout(u_bufs.layout.swizzle_byte_width, 16)
    s = i % STAGES
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
    u = u_bufs.index(s)._reinterpret(gl.uint16, [BLOCK_W, BLOCK_K // 2], words).load(word_layout)
    lo = l_bufs.index(s)._reinterpret(gl.uint16, [BLOCK_W, BLOCK_K // 2], words).load(word_layout)
    a, b = gl.inline_asm_elementwise(_MERGE_WORDS_ASM, "=r,=r,r,r,r,r", [u.to(gl.uint32), lo.to(gl.uint32)],
                                     dtype=(gl.float16, gl.float16), is_pure=True, pack=2)
    # Each asm output register is one wgmma A register: for r with bit 3 clear, a holds w[r, 2c] at
    # (r, c) and w[r, 2c + 1] at (r + 8, c), b the same of row r + 8. Name them by (row, k):
    # join(a, b)[r, c, j] = w[r & ~8 | 8 j, 2 c + (r >> 3 & 1)]. Only registers are renamed.
    w = gl.join(a, b).reshape([BLOCK_W // 16, 2, 8, BLOCK_K // 2, 2]).permute((0, 4, 2, 3, 1))
    w = gl.convert_layout(w.reshape([BLOCK_W, BLOCK_K]), a_layout, assert_trivial=True)
    acc = warpgroup_mma(w.to(x_bufs.dtype), x_bufs.index(s).permute((1, 0)), acc, use_acc=i > i0, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
    # MMA i-1 has retired: its x slot is free (its byte planes were read before it was issued).
    mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
    return acc


@common.jit
def _mma_range(x_bufs, u_bufs, l_bufs, ready, empty, i0, n, STAGES: gl.constexpr, acc_layout: gl.constexpr,
               a_layout: gl.constexpr, word_layout: gl.constexpr):
    """Ring steps i0 .. i0 + n - 1 into one output tile's accumulator; returns it with every MMA retired.
    Unrolled by two: a rolled loop would write the same (virtual) A registers while the previous step's
    MMA still reads them, and ptxas would serialize every MMA."""
    BLOCK_W: gl.constexpr = u_bufs.shape[1]
    BLOCK_T: gl.constexpr = x_bufs.shape[1]
    acc = gl.zeros([BLOCK_W, BLOCK_T], gl.float32, acc_layout)
    for j in range(n // 2):
        acc = _mma_step(x_bufs, u_bufs, l_bufs, ready, empty, acc, i0 + 2 * j, i0, STAGES, a_layout, word_layout)
        acc = _mma_step(x_bufs, u_bufs, l_bufs, ready, empty, acc, i0 + 2 * j + 1, i0, STAGES, a_layout,
                        word_layout)
    if n % 2:
        acc = _mma_step(x_bufs, u_bufs, l_bufs, ready, empty, acc, i0 + n - 1, i0, STAGES, a_layout, word_layout)
    return warpgroup_mma_wait(num_outstanding=0, deps=(acc,))


@common.jit
def _mma_partition(x_bufs, u_bufs, l_bufs, ready, empty, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, stride_ym, off_w,
                   off_t, tile, pid_k, k_tiles, out_scale, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr,
                   BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, NUM_WARPS: gl.constexpr, SPLIT_K: gl.constexpr):
    """The consumer warpgroup(s): merge + MMA over this program's K steps, then the epilogue (scale,
    bias, store y), after the split-K sum in the program that arrives last."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                         instr_shape=[16, BLOCK_T, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    word_layout: gl.constexpr = _word_layout(NUM_WARPS, u_bufs.shape[2])
    acc = _mma_range(x_bufs, u_bufs, l_bufs, ready, empty, 0, k_tiles, STAGES, acc_layout, a_layout, word_layout)

    if SPLIT_K == 1:
        common.store_transposed(acc * out_scale, acc_layout, y_ptr, bias_ptr, M, N, stride_ym, off_w, off_t,
                                HAS_BIAS, BLOCK_W, BLOCK_T, NUM_WARPS)
    else:
        total, last = common.split_k_sum(acc, acc_layout, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K, BLOCK_W, BLOCK_T)
        if last:
            common.store_transposed(total * out_scale, acc_layout, y_ptr, bias_ptr, M, N, stride_ym, off_w, off_t,
                                    HAS_BIAS, BLOCK_W, BLOCK_T, NUM_WARPS)


@common.jit
def _load_partition_sk(x_desc, u_desc, l_desc, x_bufs, u_bufs, l_bufs, ready, empty, M, N, start, end, steps,
                       STAGES: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr,
                       GROUP: gl.constexpr):
    """``_load_partition`` over a stream-K range: global K steps start .. end - 1, across tile borders. Each
    tile's offsets are worked out once (their integer divisions on every step made the loop 149 SASS
    instructions against the plain producer's 40; the H200 timed no difference, but the loop is as short)."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + u_desc.block_type.nbytes + l_desc.block_type.nbytes
    for tile in range(start // steps, (end - 1) // steps + 1):
        off_w, off_t = common.grouped_tile(tile, M, N, BLOCK_W, BLOCK_T, GROUP)
        first = tile * steps
        for kk in range(gl.maximum(start, first) - first, gl.minimum(end, first + steps) - first):
            s, bar = common.claim_slot(ready, empty, first + kk - start, STAGES, nbytes)  # the ring runs on
            k = kk * BLOCK_K
            tma.async_copy_global_to_shared(x_desc, [off_t, k], bar, x_bufs.index(s))
            tma.async_copy_global_to_shared(u_desc, [off_w, k], bar, u_bufs.index(s))
            tma.async_copy_global_to_shared(l_desc, [off_w, k], bar, l_bufs.index(s))


@common.jit
def _mma_partition_sk(x_bufs, u_bufs, l_bufs, ready, empty, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, stride_ym,
                      start, end, steps, tiles, out_scale, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr,
                      BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, NUM_WARPS: gl.constexpr, GROUP: gl.constexpr):
    """``_mma_partition`` over a stream-K range: per output tile it touches, its piece of K, then the
    epilogue (a whole tile stores at once; a piece goes through ``common.stream_k_sum``). The producer
    runs on into the next tile during an epilogue."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                         instr_shape=[16, BLOCK_T, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    word_layout: gl.constexpr = _word_layout(NUM_WARPS, u_bufs.shape[2])
    work = tiles.to(gl.int64) * steps
    for tile in range(start // steps, (end - 1) // steps + 1):
        lo = gl.maximum(start, tile * steps)
        n = gl.minimum(end, tile * steps + steps) - lo
        i0 = lo - start  # the ring's step count runs on across tiles
        acc = _mma_range(x_bufs, u_bufs, l_bufs, ready, empty, i0, n, STAGES, acc_layout, a_layout, word_layout)
        off_w, off_t = common.grouped_tile(tile, M, N, BLOCK_W, BLOCK_T, GROUP)
        if n == steps:
            common.store_transposed(acc * out_scale, acc_layout, y_ptr, bias_ptr, M, N, stride_ym, off_w, off_t,
                                    HAS_BIAS, BLOCK_W, BLOCK_T, NUM_WARPS)
        else:
            total, last = common.stream_k_sum(acc, acc_layout, ws_ptr, sem_ptr, tile, start, steps, work, BLOCK_W,
                                              BLOCK_T)
            if last:
                common.store_transposed(total * out_scale, acc_layout, y_ptr, bias_ptr, M, N, stride_ym, off_w,
                                        off_t, HAS_BIAS, BLOCK_W, BLOCK_T, NUM_WARPS)


@common.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, M, K, stride_xm, NUM_WARPS: gl.constexpr, QBLOCK: gl.constexpr):
    """Per-token E4M3 quantization of rows pid, pid + nprog, ...: ``triton_fp8.quantize_rows`` on
    the GPU, bit for bit (the same scale rounding, division and conversion). A row of up to QBLOCK
    is read once, in one load per thread (at decode one program quantizes a row, and each dependent
    load is a memory latency: the 1024-wide loop took about 10 us on a 14336-wide row); a longer one
    takes an absmax pass and a quantizing pass."""
    layout: gl.constexpr = gl.BlockedLayout([QBLOCK // (32 * NUM_WARPS)], [32], [NUM_WARPS], [0])
    offs = gl.arange(0, QBLOCK, layout=layout)
    for row in range(gl.program_id(0), M, gl.num_programs(0)):
        x_row = x_ptr + row.to(gl.int64) * stride_xm
        q_row = q_ptr + row.to(gl.int64) * K
        if K <= QBLOCK:
            xk = gl.load(x_row + offs, mask=offs < K, other=0.0).to(gl.float32)
            scale = gl.maximum(gl.max(gl.abs(xk), axis=0) * FP8_MAX_RCP, MIN_ACT_SCALE)
            q = gl.minimum(gl.maximum(gl.div_rn(xk, scale), -FP8_MAX), FP8_MAX)
            gl.store(q_row + offs, q.to(gl.float8e4nv), mask=offs < K)
        else:
            amax = gl.zeros([QBLOCK], gl.float32, layout)
            for k0 in range(0, K, QBLOCK):
                xk = gl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(gl.float32)
                amax = gl.maximum(amax, gl.abs(xk))
            scale = gl.maximum(gl.max(amax, axis=0) * FP8_MAX_RCP, MIN_ACT_SCALE)
            for k0 in range(0, K, QBLOCK):
                xk = gl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(gl.float32)
                q = gl.minimum(gl.maximum(gl.div_rn(xk, scale), -FP8_MAX), FP8_MAX)
                gl.store(q_row + k0 + offs, q.to(gl.float8e4nv), mask=k0 + offs < K)
        gl.store(s_ptr + row, scale)


@common.jit
def _ring(x_desc, u_desc, l_desc, STAGES: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr,
          BLOCK_K: gl.constexpr):
    """The STAGES-deep ring (x tile, the two byte tiles) and its barriers."""
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_T, BLOCK_K], x_desc.layout)
    u_bufs = gl.allocate_shared_memory(u_desc.dtype, [STAGES, BLOCK_W, BLOCK_K], u_desc.layout)
    l_bufs = gl.allocate_shared_memory(l_desc.dtype, [STAGES, BLOCK_W, BLOCK_K], l_desc.layout)
    ready, empty = common.ring_barriers(STAGES)
    return x_bufs, u_bufs, l_bufs, ready, empty


@common.jit
def gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, K, stride_ym, out_scale,
         HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, BLOCK_K: gl.constexpr,
         STAGES: gl.constexpr, GROUP: gl.constexpr, NUM_WARPS: gl.constexpr, SPLIT_K: gl.constexpr):
    """One program's tile (and split) in FP16 mode, one program per tile: the kernel past its mode test, which
    ``kernels.gluon_dual`` runs too."""
    x_bufs, u_bufs, l_bufs, ready, empty = _ring(x_desc, u_desc, l_desc, STAGES, BLOCK_W, BLOCK_T, BLOCK_K)
    tile, pid_k, k_lo, k_tiles = common.split_tile(K, BLOCK_K, SPLIT_K)
    off_w, off_t = common.grouped_tile(tile, M, N, BLOCK_W, BLOCK_T, GROUP)
    gl.warp_specialize([
        (_mma_partition, (x_bufs, u_bufs, l_bufs, ready, empty, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N,
                          stride_ym, off_w, off_t, tile, pid_k, k_tiles, out_scale, HAS_BIAS, STAGES, BLOCK_W,
                          BLOCK_T, NUM_WARPS, SPLIT_K)),
        (_load_partition, (x_desc, u_desc, l_desc, x_bufs, u_bufs, l_bufs, ready, empty, off_w, off_t, k_lo,
                           k_tiles, STAGES, BLOCK_K)),
    ], common.LOAD_WARPS, common.LOAD_REGS)


@common.jit(do_not_specialize=["M"])
def nested_fp16_rs_kernel(
    x_desc, u_desc, l_desc, y_ptr, bias_ptr, mode_ptr, x_ptr, q_ptr, s_ptr, ws_ptr, sem_ptr,
    M, N, K, stride_ym, stride_xm, out_scale,
    HAS_BIAS: gl.constexpr, QUANT: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr,
    BLOCK_K: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr, NUM_WARPS: gl.constexpr,
    QBLOCK: gl.constexpr, SPLIT_K: gl.constexpr, STREAM: gl.constexpr,
):
    common.gdc_launch_dependents()  # a PDL-launched FP8 GEMM after this one may start its weight prefetch
    mode = gl.load(mode_ptr)
    if mode != 0:
        # FP8 mode: with QUANT, this launch quantizes x for the FP8 GEMM that follows instead of
        # idling (as ``triton_fp16.nested_fp16_kernel`` does), so the op stays at two launches.
        if QUANT:
            if mode == 1:
                _quantize_rows(x_ptr, q_ptr, s_ptr, M, K, stride_xm, NUM_WARPS, QBLOCK)
        return
    if STREAM:
        x_bufs, u_bufs, l_bufs, ready, empty = _ring(x_desc, u_desc, l_desc, STAGES, BLOCK_W, BLOCK_T, BLOCK_K)
        steps = gl.cdiv(K, BLOCK_K)
        tiles = gl.cdiv(N, BLOCK_W) * gl.cdiv(M, BLOCK_T)
        start, end = common.stream_range(tiles, steps)
        gl.warp_specialize([
            (_mma_partition_sk, (x_bufs, u_bufs, l_bufs, ready, empty, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N,
                                 stride_ym, start, end, steps, tiles, out_scale, HAS_BIAS, STAGES, BLOCK_W, BLOCK_T,
                                 NUM_WARPS, GROUP)),
            (_load_partition_sk, (x_desc, u_desc, l_desc, x_bufs, u_bufs, l_bufs, ready, empty, M, N, start, end,
                                  steps, STAGES, BLOCK_K, BLOCK_W, BLOCK_T, GROUP)),
        ], common.LOAD_WARPS, common.LOAD_REGS)
    else:
        gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, K, stride_ym, out_scale, HAS_BIAS,
             BLOCK_W, BLOCK_T, BLOCK_K, STAGES, GROUP, NUM_WARPS, SPLIT_K)


def programs(tile: tuple[int, ...], m: int, n: int, k: int, device: torch.device) -> int:
    """How many programs a launch of ``tile`` runs: a program per output tile and split, or (stream-K) one
    per SM, at most one per K step."""
    tiles = cdiv(n, tile[0]) * cdiv(m, tile[1])
    split = tile_split(tile)
    return stream_programs(device, tiles, cdiv(k, tile[2])) if split == STREAM_K else tiles * split


def quantize_block(k: int, num_warps: int) -> int:
    """The quantizing path's block: the row's power of two (>= 1024), at most 64 values a thread."""
    return min(max(1024, 1 << (k - 1).bit_length()), 64 * 32 * num_warps)


def smem_bytes(block_w: int, block_t: int, block_k: int, stages: int) -> int:
    """The ring (x tile + two byte tiles per stage), 2 KiB per consumer warpgroup for the epilogue's layout
    conversion (as in ``kernels.gluon_fp8.smem_bytes``), and 512 bytes for barriers and partition state.
    Without the 2 KiB, (128, 128, 64, 7) passed this check and then needed 233,596 bytes on the H200."""
    return stages * (block_t * block_k * 2 + 2 * block_w * block_k) + 32 * block_w + 512


def config_problem(block_w: int, block_t: int, block_k: int, stages: int) -> str | None:
    """Why a tile config cannot work on sm_90 (None if it should): checked before compiling. 256-row tiles
    (four consumer warpgroups at 112 registers) work, but ran at 0.58-0.84 of the shipped tiles' speed on the
    H200 (docs/BENCHMARKS.md, "Four consumer warpgroups"), so the sweeps leave them out."""
    tile = (block_w, block_t, block_k, stages)
    return common.tile_problem(tile, (64, 128), smem_bytes(*tile), (64, 128, 256))


def descriptors(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor,
                tile: tuple[int, ...]) -> tuple[TmaArg, TmaArg, TmaArg]:
    """The kernel's TMA descriptors for ``tile``: x's [block_t, block_k] tiles, the two planes' [block_w,
    block_k] byte tiles (the upper plane read as bytes whatever its stored dtype)."""
    (m, k), n = x2d.shape, upper.shape[0]
    block_w, block_t, block_k = tile[:3]
    xdt = "float16" if x2d.dtype == torch.float16 else "bfloat16"
    plane_layout = common.smem_layout((block_w, block_k), "uint8")
    return (TmaArg(x2d, (m, k), (x2d.stride(0), 1), (block_t, block_k), common.smem_layout((block_t, block_k), xdt)),
            TmaArg(upper, (n, k), (k, 1), (block_w, block_k), plane_layout, torch.uint8),
            TmaArg(lower, (n, k), (k, 1), (block_w, block_k), plane_layout))


def nested_fp16_gemm_rs(
    x2d: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    tile: tuple[int, ...] = (128, 128, 64, 4),
    checked: bool = False,
    quant_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Writes ``x2d @ (merge(upper, lower) * 2**scale_exp).T + bias`` into ``out`` if ``mode[0] == 0``.

    Otherwise ``out`` is returned as it was, and, if ``mode[0] == 1`` and ``quant_out = (q, s)``
    is given, the launch writes the per-token E4M3 quantization of x there (for the FP8 GEMM).
    ``tile`` = (block_w, block_t, block_k, stages[, split_k]): split_k > 1 runs that many programs per
    output tile over slices of K, for grids far short of the SMs; ``STREAM_K`` (0) runs stream-K
    (module docstring). Both use ``kernels.split_k``'s buffers, and run one program per tile where
    a CUDA-graph capture finds none. ``checked``: the caller (the dispatcher) has
    checked the operands, the device, the tile and TMA addressing, so this call does not.
    Raises ``GluonUnavailable`` off Hopper or without Gluon, ``ValueError`` for a tile that cannot
    fit, K % 16 != 0 or operands TMA cannot address (16-byte aligned bases and row pitches).
    """
    m, n, k, out = prepare(x2d, upper, lower, out, checked)
    if not checked:
        common.check_launch("nested_fp16_gemm_rs", tile[:4], config_problem(*tile[:4]), x2d, upper, lower)
        if tile_split(tile) < 0:
            raise ValueError(f"split_k must be >= 1, or {STREAM_K} for stream-K; got {tile[4]}")
    block_w, block_t, block_k, stages = tile[:4]
    if m == 0:
        return out
    sx = x2d.stride(0)
    descs = descriptors(x2d, upper, lower, tile)
    so = out.stride(0)
    q, s = quant_out if quant_out is not None else (out, out)
    tiles = cdiv(n, block_w) * cdiv(m, block_t)
    split_k = tile_split(tile)
    stream_programs = 0
    if split_k == STREAM_K:
        stream_programs, ws, sem = stream_buffers(x2d, tiles, cdiv(k, block_k), block_w * block_t, out)
        split_k = 1  # without buffers (0 programs): one program per tile
    if not stream_programs:
        split_k, ws, sem = split_buffers(x2d, tiles, split_k, block_w * block_t, out)
    num_warps = block_w // 16
    # Quantizing: rows up to 64 values a thread are read once (quantize_block); else no matter.
    qblock = quantize_block(k, num_warps) if quant_out is not None else 1024
    spec = (x2d.dtype, out.dtype, None if bias is None else bias.dtype, out.data_ptr() & 15,
            0 if bias is None else bias.data_ptr() & 15, q.dtype, q.data_ptr() & 15, s.data_ptr() & 15,
            n & 15, k & 15, so & 15, sx & 15, n == 1, ws.data_ptr() & 15, sem.data_ptr() & 15)
    launch(
        nested_fp16_rs_kernel, stream_programs or tiles * split_k,
        (*descs, out, bias if bias is not None else out, mode, x2d, q, s, ws, sem, m, n, k, so, sx,
         2.0**scale_exp),
        dict(HAS_BIAS=bias is not None, QUANT=quant_out is not None, BLOCK_W=block_w, BLOCK_T=block_t,
             BLOCK_K=block_k, STAGES=stages, GROUP=8, NUM_WARPS=num_warps, QBLOCK=qblock, SPLIT_K=split_k,
             STREAM=stream_programs > 0),
        num_warps, 1, spec,
    )
    return out
