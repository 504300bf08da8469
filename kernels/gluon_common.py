"""What the Gluon kernels for Hopper (``kernels.gluon_fp16``, ``kernels.gluon_fp8``) share.

Both are swap-AB GEMMs (the weight in wgmma's M slot, the tokens in its N slot) fed by a 1-warp TMA
producer through a ring of mbarrier-guarded stages, so beyond the import guard and the host checks
they share device code too: the producer's claim of a slot, the grouped tile order, the ring's
barriers and the epilogue's bias and transposed store. Each piece is inlined where it is called.

The import guard: Gluon (``triton.experimental.gluon``) is an experimental API (used here as of
Triton 3.6.0), so a module importing this one loads on any machine, and its launches raise
``GluonUnavailable`` where Gluon did not import (``IMPORT_ERROR`` says why) or the GPU is no sm_90.
"""

from __future__ import annotations

import functools

import torch

try:  # Gluon (triton.experimental.gluon) exists from Triton 3.4; the API used here is 3.6.0's.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    IMPORT_ERROR: Exception | None = None
except Exception as e:  # noqa: BLE001 - any failure means "no Gluon here", reported when called
    gluon = gl = None
    fence_async_shared = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = None
    IMPORT_ERROR = e

__all__ = ["IMPORT_ERROR", "LOAD_REGS", "LOAD_WARPS", "SMEM_LIMIT", "GluonUnavailable", "available", "check_launch",
           "claim_slot", "const", "fence_async_shared", "gdc_launch_dependents", "gdc_wait", "gl", "gluon",
           "grouped_tile", "jit", "mbarrier", "ring_barriers", "smem_layout", "split_k_sum", "split_tile",
           "store_transposed", "stream_k_sum", "stream_owner", "stream_range", "stream_start", "tile_problem", "tma",
           "tma_ok", "warpgroup_mma", "warpgroup_mma_wait"]

SMEM_LIMIT = 232448  # H200 (sm_90): 227 KiB of shared memory per block


class GluonUnavailable(RuntimeError):
    """This Triton has no (compatible) Gluon, or the device is not an sm_90 GPU."""


def jit(fn=None, **kw):
    """``gluon.jit`` when Gluon imported; else the plain function (never called then)."""
    if gluon is None:
        return fn if fn is not None else (lambda f: f)
    return gluon.jit(fn, **kw) if fn is not None else gluon.jit(**kw)


const = gl.constexpr if gl is not None else (lambda v: v)  # wraps the globals a Gluon kernel may read
LOAD_WARPS = const([1])  # the TMA worker
LOAD_REGS = const([24])  # setmaxnreg minimum; it holds a few scalars


# ------------------------------------------------------------------------------------------- device


@jit
def gdc_launch_dependents():
    """Lets a kernel launched after this one with programmatic dependent launch (PDL) start now, before
    this one ends: its prologue (the FP8 GEMM's weight prefetch) overlaps this kernel. A no-op
    without a PDL launch after it."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False,
                              pack=1)


@jit
def gdc_wait():
    """Waits until the kernel before this PDL launch has finished and its writes are visible (returns
    at once without PDL). Every path of a PDL-launched kernel passes it before it ends, so that the
    stream's next kernel, which waits for this one only, also runs after the one before."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@jit
def grouped_tile(tile, M, N, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, GROUP: gl.constexpr):
    """(off_w, off_t) of output tile number ``tile`` in grouped order: GROUP weight blocks walk the
    token blocks together, so each weight block comes from HBM about once and x blocks stay in L2."""
    num_w = gl.cdiv(N, BLOCK_W)
    num_t = gl.cdiv(M, BLOCK_T)
    per_group = GROUP * num_t
    first_w = (tile // per_group) * GROUP
    size = gl.minimum(num_w - first_w, GROUP)
    pid_w = first_w + (tile % per_group) % size
    pid_t = (tile % per_group) // size
    return pid_w * BLOCK_W, pid_t * BLOCK_T


@jit
def split_tile(K, BLOCK_K: gl.constexpr, SPLIT_K: gl.constexpr):
    """(tile, pid_k, k_lo, k_steps) of this program: SPLIT_K consecutive programs per output tile
    (``kernels.split_k.split_ids``), each over a contiguous slice of the K steps."""
    pid = gl.program_id(0)
    pid_k = pid % SPLIT_K
    steps = gl.cdiv(K, BLOCK_K)
    k_lo = pid_k * steps // SPLIT_K
    return pid // SPLIT_K, pid_k, k_lo, (pid_k + 1) * steps // SPLIT_K - k_lo


@jit
def ring_barriers(STAGES: gl.constexpr):
    """(ready, empty): per stage, TMA has filled the slot / the MMA that read it has retired;
    initialized and fenced, so allocated after the ring's buffers and before the partitions fork."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    fence_async_shared()
    return ready, empty


@jit
def claim_slot(ready, empty, i, STAGES: gl.constexpr, nbytes: gl.constexpr):
    """The TMA producer's step i: waits until slot i % STAGES is free (the MMA that read its previous
    contents retired), arms its ready barrier for ``nbytes``; returns (slot, ready barrier)."""
    s = i % STAGES
    # A fresh mbarrier counts as having completed the phase of parity 1: the first pass over
    # the ring does not block.
    mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
    bar = ready.index(s)
    mbarrier.expect(bar, nbytes)
    return s, bar


@jit
def _tile_offsets(acc_layout: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr):
    """Row-major offsets of a [BLOCK_W, BLOCK_T] fp32 partial tile in the accumulator's layout: each thread
    writes and later reads back its own elements."""
    r = gl.arange(0, BLOCK_W, layout=gl.SliceLayout(1, acc_layout))
    c = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, acc_layout))
    return r[:, None] * BLOCK_T + c[None, :]


@jit
def split_k_sum(acc, acc_layout: gl.constexpr, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K: gl.constexpr,
                BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr):
    """``kernels.split_k.reduce_partials`` in Gluon: publish this program's partial tile, then a barrier
    (every thread's stores precede the release) and the acq_rel counter; returns (the fixed-order sum of
    all partials, whether this program arrived last). The last one resets the counter; only its sum is
    complete."""
    TILE: gl.constexpr = BLOCK_W * BLOCK_T
    offs = _tile_offsets(acc_layout, BLOCK_W, BLOCK_T)
    tile_ws = ws_ptr + tile.to(gl.int64) * (SPLIT_K * TILE)
    gl.store(tile_ws + pid_k * TILE + offs, acc)
    gl.thread_barrier()
    arrived = gl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == SPLIT_K - 1
    total = gl.zeros([BLOCK_W, BLOCK_T], gl.float32, acc_layout)
    if last:
        for sk in gl.static_range(SPLIT_K):  # fixed order: the same sum whichever program is last
            total += gl.load(tile_ws + sk * TILE + offs, cache_modifier=".cg")
        gl.store(sem_ptr + tile, 0)
    return total, last


@jit
def stream_start(p, work):
    """Stream-K: the first of the ``work`` K steps of all output tiles (tile t's steps are t * steps ...
    (t + 1) * steps - 1) that program ``p`` takes; the steps are cut evenly over the programs."""
    return (p.to(gl.int64) * work // gl.num_programs(0)).to(gl.int32)


@jit
def stream_range(tiles, steps):
    """Stream-K: this program's [start, end) of the ``tiles * steps`` K steps (``stream_start``). The host
    launches at most one program per step, so none is empty."""
    work = tiles.to(gl.int64) * steps
    p = gl.program_id(0)
    return stream_start(p, work), stream_start(p + 1, work)


@jit
def stream_owner(step, work):
    """Stream-K: the program whose range (``stream_range``) holds global K step ``step`` of ``work``."""
    return (((step.to(gl.int64) + 1) * gl.num_programs(0) - 1) // work).to(gl.int32)


@jit
def stream_k_sum(acc, acc_layout: gl.constexpr, ws_ptr, sem_ptr, tile, start, steps, work,
                 BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr):
    """``split_k_sum`` for stream-K, where a tile's K steps fall to 2 or more consecutive programs (the
    caller stores tiles it covered whole). Each program has two partial slots in the workspace: 0 for
    the piece its range starts in, 1 for the one it ends in (pieces between are whole tiles). Returns
    (the sum of the tile's pieces in program order, whether this program arrived last); the last resets
    the tile's counter."""
    TILE: gl.constexpr = BLOCK_W * BLOCK_T
    offs = _tile_offsets(acc_layout, BLOCK_W, BLOCK_T)
    first_step = tile * steps
    slot = (start < first_step).to(gl.int32)
    gl.store(ws_ptr + (gl.program_id(0) * 2 + slot).to(gl.int64) * TILE + offs, acc)
    gl.thread_barrier()
    first = stream_owner(first_step, work)
    pieces = stream_owner(first_step + steps - 1, work) - first + 1
    arrived = gl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == pieces - 1
    total = gl.zeros([BLOCK_W, BLOCK_T], gl.float32, acc_layout)
    if last:
        for q in range(first, first + pieces):  # program order: the same sum whichever program is last
            q_slot = (stream_start(q, work) < first_step).to(gl.int32)
            total += gl.load(ws_ptr + (q * 2 + q_slot).to(gl.int64) * TILE + offs, cache_modifier=".cg")
        gl.store(sem_ptr + tile, 0)
    return total, last


@jit
def store_transposed(acc, acc_layout: gl.constexpr, y_ptr, bias_ptr, M, N, stride_ym, off_w, off_t,
                     HAS_BIAS: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr, NUM_WARPS: gl.constexpr):
    """y[t, w] = acc[w, t] + bias[w] in y's dtype, for the [BLOCK_W, BLOCK_T] tile at (off_w, off_t)."""
    rows = off_w + gl.arange(0, BLOCK_W, layout=gl.SliceLayout(1, acc_layout))  # weight rows = y columns
    if HAS_BIAS:
        b = gl.load(bias_ptr + rows, mask=rows < N, other=0.0)
        acc = acc + b.to(gl.float32)[:, None]
    # y[t, w]: consecutive weight rows are consecutive addresses, so store from a layout in which
    # each thread holds 8 consecutive rows of one token column.
    store_layout: gl.constexpr = gl.BlockedLayout([8, 1], [BLOCK_W // 8, 256 // BLOCK_W], [1, NUM_WARPS], [0, 1])
    out = gl.convert_layout(acc.to(y_ptr.dtype.element_ty), store_layout)
    rows = off_w + gl.arange(0, BLOCK_W, layout=gl.SliceLayout(1, store_layout))
    toks = off_t + gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, store_layout))
    ptrs = y_ptr + toks.to(gl.int64)[None, :] * stride_ym + rows[:, None]
    gl.store(ptrs, out, mask=(rows[:, None] < N) & (toks[None, :] < M))


# --------------------------------------------------------------------------------------------- host


@functools.cache
def available(device_index: int) -> bool:
    """Gluon imported and the device is sm_90 (the kernels use Hopper's wgmma and TMA)."""
    return IMPORT_ERROR is None and torch.cuda.get_device_capability(device_index)[0] == 9


@functools.cache
def smem_layout(block: tuple[int, int], dtype: str):
    """The NVMMA shared layout (swizzled for wgmma) of a TMA block of ``gl.<dtype>`` elements."""
    return gl.NVMMASharedLayout.get_default_for(list(block), getattr(gl, dtype))


def tile_problem(tile: tuple[int, int, int, int], block_ks: tuple[int, ...], smem: int,
                 block_ws: tuple[int, ...] = (64, 128)) -> str | None:
    """Why a (block_w, block_t, block_k, stages) tile cannot work on sm_90 (None if it should), for a
    kernel that takes these block_w and block_k values and needs ``smem`` bytes of shared memory for the tile."""
    block_w, block_t, block_k, stages = tile
    if block_w not in block_ws:
        return f"block_w must be one of {block_ws} (64 weight rows per consumer warpgroup)"
    if block_t not in (16, 32, 64, 128, 256):
        return "block_t must be a power of two in [16, 256] (wgmma N)"
    if block_k not in block_ks:
        return f"block_k must be one of {block_ks}"
    if stages < 2:
        return "stages must be >= 2"
    if smem > SMEM_LIMIT:
        return f"needs {smem} bytes of shared memory (> {SMEM_LIMIT})"
    return None


def tma_ok(x: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor | None = None) -> bool:
    """What TMA needs of the operands: K % 16 == 0, unit stride along K, 16-byte aligned bases and row
    pitches (the planes are contiguous [N, K] bytes: K % 16 == 0 aligns their pitch). The FP8 kernel
    reads no lower plane. Spelled out, not a loop over planes: the FP16 op asks on every eager call."""
    return (x.shape[1] % 16 == 0 and x.stride(1) == 1 and (x.stride(0) * x.element_size()) % 16 == 0
            and x.data_ptr() % 16 == 0 and upper.data_ptr() % 16 == 0
            and (lower is None or lower.data_ptr() % 16 == 0))


def check_launch(fn: str, tile: tuple[int, int, int, int], problem: str | None, x: torch.Tensor,
                 upper: torch.Tensor, lower: torch.Tensor | None = None) -> None:
    """What every launch of ``fn`` needs beyond its operands' shapes and dtypes: raises
    ``GluonUnavailable`` off an sm_90 GPU or without Gluon, ``ValueError`` for a tile that cannot
    work (``problem``, from the kernel's ``config_problem``) or operands TMA cannot address."""
    if x.device.type != "cuda" or not available(x.device.index or 0):
        raise GluonUnavailable(f"{fn} needs an sm_90 GPU and Gluon (got {x.device}; "
                               f"import error: {IMPORT_ERROR!r})")
    if problem:
        raise ValueError(f"tile {tile}: {problem}")
    if not tma_ok(x, upper, lower):
        raise ValueError("TMA needs K % 16 == 0 and 16-byte aligned x and plane bases and row pitches")
