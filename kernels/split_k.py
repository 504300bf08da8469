"""Split-K for the small-M GEMMs: more programs than weight tiles, one launch, a deterministic sum.

Why: at decode a layer has few weight tiles (8B.o: N = 4096 is 64 tiles of 64 rows), fewer than the
H200's 132 SMs. Each program streams its weight rows at a roughly fixed rate, so such a launch reads
at a fraction of the memory bandwidth. With ``SPLIT_K`` programs per tile, each sums its slice of K
into an fp32 partial tile. The last one to arrive at the tile's semaphore adds all the partials in a
fixed order (so the result does not depend on which program finished last), runs the epilogue, and
sets the semaphore back to 0 for the next launch. So the op stays one launch, and CUDA graphs replay it as is.

Host side: ``buffers`` keeps, per device, the partial tiles and the zeroed counters. Launches run one
at a time (vLLM runs a forward on one stream), each leaves its counters at zero and reads its partials
before it ends, so one set serves every launch, and no launch allocates. The set is allocated by an
eager call, never inside a CUDA-graph capture: there its zeroing would only be recorded, not run, and
other graphs would find the counters unset. A capture that finds no set large enough runs one program
per tile instead (the kernels' warm-up makes the set before vLLM captures).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BUFFERS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers: graphs captured earlier may still point at them
_MIN_SEMAPHORES = 1 << 16
_MIN_PARTIALS = 1 << 22  # fp32 elements (16 MiB)


def buffers(device: torch.device, tiles: int, partials: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(>= ``partials`` fp32 elements of workspace, >= ``tiles`` zeroed int32 counters) on ``device``;
    None during a CUDA-graph capture that would need to allocate them (module docstring)."""
    key = -1 if device.type != "cuda" else (device.index if device.index is not None else torch.cuda.current_device())
    got = _BUFFERS.get(key)
    if got is not None and got[0].numel() >= partials and got[1].numel() >= tiles:
        return got
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if got is not None:
        _RETIRED.extend(got)
    got = _BUFFERS[key] = (torch.empty(max(partials, _MIN_PARTIALS), dtype=torch.float32, device=device),
                           torch.zeros(max(tiles, _MIN_SEMAPHORES), dtype=torch.int32, device=device))
    return got


def semaphores(device: torch.device) -> torch.Tensor:
    """The device's counters (tests: all zero between launches)."""
    return buffers(device, 0, 0)[1]


@triton.jit
def k_range(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, pid_k):
    """The K steps [lo, hi) of split ``pid_k``: contiguous, as even as the step count allows."""
    steps = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(steps, SPLIT_K)
    lo = pid_k * per
    return lo, tl.minimum(lo + per, steps)


@triton.jit
def reduce_partials(acc, ws_ptr, sem_ptr, tile, pid_k, SPLIT_K: tl.constexpr):
    """Publish ``acc`` (this program's partial tile); returns (the sum of all ``SPLIT_K`` partials,
    whether this program arrived last). Only the last program's sum is complete."""
    R: tl.constexpr = acc.shape[0]
    C: tl.constexpr = acc.shape[1]
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tile_ws = ws_ptr + tile.to(tl.int64) * (SPLIT_K * R * C)
    tl.store(tile_ws + pid_k * (R * C) + offs, acc)
    tl.debug_barrier()  # every thread's stores precede the release below
    arrived = tl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == SPLIT_K - 1
    total = tl.zeros((R, C), dtype=tl.float32)
    if last:
        for s in tl.static_range(SPLIT_K):  # fixed order: the same sum whoever is last
            total += tl.load(tile_ws + s * (R * C) + offs, cache_modifier=".cg")
        tl.store(sem_ptr + tile, 0)
    return total, last
