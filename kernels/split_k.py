"""Split-K for the small-M GEMMs: more programs than weight tiles, one launch, a deterministic sum.

Why: at decode a layer can have fewer weight tiles than the H200 has SMs (8B.o: N = 4096 is 64 tiles
of 64 rows, against 132 SMs). With ``SPLIT_K`` programs per tile, each sums its slice of K into an
fp32 partial tile. The last one to arrive at the tile's semaphore adds all the partials in a fixed
order (so the result does not depend on which program finished last), runs the epilogue, and sets the
semaphore back to 0 for the next launch. So the op stays one launch, and CUDA graphs replay it as is.
The tile table uses it only where the H200 sweep measured it faster: mostly long K against N, as in
8B.down (docs/BENCHMARKS.md, "Kernels v5").

Host side: ``buffers`` keeps, per device, the partial tiles and the zeroed counters. Each launch
leaves its counters at zero and reads its partials before it ends, so one set serves every launch,
and no launch allocates, as long as split-K launches on one device run one at a time. vLLM runs a
model's forward on one stream. Where two streams could run these GEMMs at once, turn split-K off
(``NESTEDFP_SPLIT_K=0``). The set is allocated outside CUDA-graph captures (``reserve``, called when
the vLLM linear method loads a layer, or the first eager call that needs it): inside a capture its
zeroing would only be recorded, not run, so other graphs would find the counters unset. A capture
that finds no set large enough runs one program per tile instead, and says so once in the log.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace

import torch
import triton
import triton.language as tl

from kernels.tuning import TileConfig

logger = logging.getLogger(__name__)

ENABLED = os.environ.get("NESTEDFP_SPLIT_K", "1") != "0"
_BUFFERS: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers: graphs captured earlier may still point at them
_MIN_SEMAPHORES = 1 << 16
_MIN_PARTIALS = 1 << 22  # fp32 elements (16 MiB): the Llama-3.1 tables' largest need is 2.6 M
# ... and stream-K's: two partial tiles per program, one program per SM, tiles of up to 128 x 256.
STREAM_TILE_ELEMS = 128 * 256
_warned_capture = False


def _key(device: torch.device) -> tuple[str, int]:
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return (device.type, index)


def buffers(device: torch.device, tiles: int, partials: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(>= ``partials`` fp32 elements of workspace, >= ``tiles`` zeroed int32 counters) on ``device``;
    None where split-K is off, or during a CUDA-graph capture that would need to allocate them."""
    global _warned_capture
    if not ENABLED:
        return None
    key = _key(device)
    got = _BUFFERS.get(key)
    if got is not None and got[0].numel() >= partials and got[1].numel() >= tiles:
        return got
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        if not _warned_capture:
            _warned_capture = True
            logger.warning("nestedfp: a CUDA-graph capture found no split-K buffers of %d partials and %d "
                           "counters on %s; captured GEMMs run one program per tile", partials, tiles, device)
        return None
    if got is not None:
        _RETIRED.extend(got)
        partials, tiles = max(partials, 2 * got[0].numel()), max(tiles, 2 * got[1].numel())
    got = _BUFFERS[key] = (torch.empty(max(partials, _MIN_PARTIALS), dtype=torch.float32, device=device),
                           torch.zeros(max(tiles, _MIN_SEMAPHORES), dtype=torch.int32, device=device))
    return got


def split_buffers(x2d: torch.Tensor, tiles: int, split_k: int, tile_elems: int,
                  unused: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(split-K factor, partials workspace, semaphores) for a GEMM launch of ``tiles`` output tiles of
    ``tile_elems`` each: ``unused`` twice and factor 1 without split-K, or where a capture finds no
    buffers. ``x2d.device`` is read only when the launch splits (it is on the GEMM's hot path)."""
    if split_k > 1:
        got = buffers(x2d.device, tiles, tiles * split_k * tile_elems)
        if got is not None:
            return split_k, *got
    return 1, unused, unused


def stream_buffers(x2d: torch.Tensor, tiles: int, steps: int, tile_elems: int,
                   unused: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(programs, partials workspace, semaphores) for a stream-K launch over ``tiles`` output tiles of
    ``steps`` K steps: one program per SM (none idle: at most one per step), two partial tiles each;
    0 programs (and ``unused`` twice) where a capture finds no buffers."""
    programs = stream_programs(x2d.device, tiles, steps)
    got = buffers(x2d.device, tiles, programs * 2 * tile_elems)
    return (programs, *got) if got is not None else (0, unused, unused)


def stream_programs(device: torch.device, tiles: int, steps: int) -> int:
    """A stream-K launch's programs: one per SM, at most one per K step (so none is idle)."""
    return min(sm_count(device), tiles * steps)


@functools.cache
def _sm_count(device_type: str, index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count if device_type == "cuda" else 4


def sm_count(device: torch.device) -> int:
    """The device's SMs (4 for CPU tensors under the interpreter): stream-K's program count."""
    return _sm_count(*_key(device))


def launch_buffers(x2d: torch.Tensor, tiles: int, cfg: TileConfig,
                   unused: torch.Tensor) -> tuple[TileConfig, torch.Tensor, torch.Tensor]:
    """``split_buffers`` for a Triton GEMM's tile config, with its split-K turned off where it cannot split."""
    split, ws, sem = split_buffers(x2d, tiles, cfg.split_k, cfg.block_n * cfg.block_m, unused)
    return (cfg if split == cfg.split_k else replace(cfg, split_k=1)), ws, sem


def reserve(device: torch.device) -> None:
    """Allocate the device's buffers now (outside any capture), large enough for any split-K tile of the
    tables and for stream-K on every SM."""
    buffers(device, 0, sm_count(device) * 2 * STREAM_TILE_ELEMS)


def semaphores(device: torch.device) -> torch.Tensor | None:
    """The device's counters, if allocated (tests: all zero between launches)."""
    got = _BUFFERS.get(_key(device))
    return None if got is None else got[1]


@triton.jit
def split_ids(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """This program's (tile, split, first K step, end K step): ``SPLIT_K`` consecutive programs per
    tile, each over contiguous K steps, the slices differing in size by at most one step (a slice is
    empty only where there are fewer steps than splits; it then adds a zero partial)."""
    tile = tl.program_id(0) // SPLIT_K
    pid_k = tl.program_id(0) % SPLIT_K
    steps = tl.cdiv(K, BLOCK_K)
    return tile, pid_k, pid_k * steps // SPLIT_K, (pid_k + 1) * steps // SPLIT_K


@triton.jit
def reduce_partials(acc, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K: tl.constexpr):
    """Publish ``acc`` (this program's partial tile); returns (the sum of all ``SPLIT_K`` partials,
    whether this program arrived last). Only the last program's sum is complete."""
    R: tl.constexpr = acc.shape[0]
    C: tl.constexpr = acc.shape[1]
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tile_ws = ws_ptr + tile.to(tl.int64) * (SPLIT_K * R * C)
    tl.store(tile_ws + pid_k * (R * C) + offs, acc)
    # Ordering (the pattern of CUTLASS's split-K semaphore): a barrier, so that every thread's stores
    # precede the release; Triton runs a scalar atomic in one thread and hands its result to the others
    # through shared memory behind another barrier, so their loads below follow its acquire (checked in
    # the PTX of Triton 3.6: bar.sync, atom.acq_rel.gpu, bar.sync, ld.global.cg).
    tl.debug_barrier()
    arrived = tl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == SPLIT_K - 1
    total = tl.zeros((R, C), dtype=tl.float32)
    if last:
        for s in tl.static_range(SPLIT_K):  # fixed order: the same sum whoever is last
            total += tl.load(tile_ws + s * (R * C) + offs, cache_modifier=".cg")
        tl.store(sem_ptr + tile, 0)
    return total, last
