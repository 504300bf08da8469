"""Eager FP8 calls at decode sizes, prepared once per layer and shape.

Why: an eager call of the op in FP8 mode below ``LARGE_M_THRESHOLD`` enqueues ``act_quant`` and the Gluon FP8
GEMM. On the H200 boxes its Python took 50-83 us against 13-30 us of GPU work at M <= 64, so eager do_bench rows
timed the host about half the time (docs/BENCHMARKS.md, "Kernels v16" and its re-run). Most of that Python
re-derives, on every call, what is the same for every call of a layer at one M: tiles, constexprs,
specializations, the weight's TMA descriptor, the launch records.

So the first such call of a (layer, M) takes the dispatcher's path, and ``record`` keeps what it launched. Later
calls look it up (``lookup``) by what decides it (x's shape, dtype, strides and alignment; the plane; the mode
tensor; the pre-scale; the bias), take x's codes and scales from one buffer per stream, allocate the output, and
launch the same two kernels with the same arguments through ``fast_launch.run_direct`` (``run``). They are taken only when the host mirror says FP8,
outside CUDA-graph captures, while no launch hook (profiler) is set and while the dispatcher's picks are those
the plan was made under (its tables' config, PDL, split-K: ``triton_dispatch`` checks); any other call takes the
dispatcher's path. ``NESTEDFP_EAGER_PLANS=0`` turns the plans off.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from kernels import gluon_fp8
from kernels.fast_launch import TmaArg, direct_record, run_direct
from kernels.fast_launch import current_raw_stream as _raw_stream
from kernels.mode_state import host_mode
from kernels.triton_fp8 import act_quant_kernel, act_quant_launch

ENABLED = os.environ.get("NESTEDFP_EAGER_PLANS", "1") != "0"  # 0: every call takes the dispatcher's path
MAX_PLANS = 4096  # past this many, the plans are dropped and re-made as calls come (each is a few hundred bytes)


class Plan(NamedTuple):
    """One layer's eager FP8 call at one M: both launches' records and their fixed arguments."""

    quant: object  # fast_launch's record of act_quant's launch
    gemm: object  # ... and of the GEMM's
    grid: int  # the GEMM's programs
    m: int
    n: int
    k: int
    sx: int  # x's row pitch
    dtype: torch.dtype  # x's, and the output's
    device: torch.device
    q_desc: tuple  # the codes' TmaArg fields after the base
    w_desc: tuple  # the upper plane's (the plane itself is the caller's: a plan holds no weight alive)
    ws: torch.Tensor  # split-K partials (or a placeholder)
    sem: torch.Tensor  # split-K counters (or a placeholder)
    w_scale: float
    picks: tuple  # the dispatcher's picks it was made under (``triton_dispatch``): a plan serves only those


_PLANS: dict[tuple, Plan] = {}


def _key(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
         bias: torch.Tensor | None) -> tuple:
    """What decides the call's launches, besides the tables (fixed once loaded) and the mode's value."""
    return (x2d.shape, x2d.dtype, x2d.stride(), x2d.data_ptr() & 15, x2d.get_device(), upper.data_ptr(),
            upper.shape, upper.dtype, mode.data_ptr(), scale_exp,
            None if bias is None else (bias.data_ptr(), bias.dtype))


def record(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int, bias: torch.Tensor | None,
           cfg: tuple[int, ...], pdl: bool, picks: tuple) -> None:
    """Keeps the launches the dispatcher just made for this eager FP8 call: ``act_quant`` (a plain launch), then
    the Gluon GEMM with config ``cfg`` (PDL as ``pdl`` says), under the dispatcher's ``picks``. Nothing is kept
    until both were launched directly (from their second call on)."""
    if not ENABLED:
        return
    key = _key(x2d, upper, mode, scale_exp, bias)
    if key in _PLANS:
        return
    m, k = x2d.shape
    n = upper.shape[0]
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    s = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    _, _, consts, warps, stages, spec, quant_pdl = act_quant_launch(x2d, q, s, mode)
    quant = direct_record(act_quant_kernel, consts, warps, stages, spec, quant_pdl)
    grid, args, consts, warps, stages, spec, pdl = gluon_fp8.gemm_launch(q, s, upper, mode, scale_exp, bias, out,
                                                                         cfg[:4], cfg[4], pdl)
    gemm = direct_record(gluon_fp8.nested_fp8_rs_kernel, consts, warps, stages, spec, pdl)
    if quant is None or gemm is None:
        return
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    q_desc, w_desc, *_, ws, sem, _m, _n, _k, _so, w_scale = args
    _PLANS[key] = Plan(quant, gemm, grid, m, n, k, x2d.stride(0), x2d.dtype, x2d.device, tuple(q_desc[1:]),
                       tuple(w_desc[1:]), ws, sem, w_scale, picks)


def _capturing(x: torch.Tensor) -> bool:
    """A CUDA-graph capture is under way on x's stream: its calls take the device pick."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def lookup(x: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
           bias: torch.Tensor | None) -> Plan | None:
    """The plan of this call if one was recorded and the call is eager in FP8 mode by the host mirror; the caller
    checks that its picks still hold (``Plan.picks``)."""
    if not _PLANS or x.dim() != 2:
        return None
    p = _PLANS.get(_key(x, upper, mode, scale_exp, bias))
    if p is None or host_mode(mode) != "fp8" or _capturing(x):
        return None
    return p


# Per (device, stream): a buffer for x's codes and scales, and its [M, K] / [M] views by (M, K). One buffer serves
# every planned call on a stream: each call's act_quant is a plain launch, so it starts only after the GEMM that
# read the codes before (stream order); no planned call runs inside a capture.
_WORK: dict[tuple[int, int], tuple[torch.Tensor, dict]] = {}


def _codes(device: torch.device, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x's codes and scales for a planned call, in the stream's buffer: two allocations fewer per call."""
    where = (device.index, _raw_stream(device.index) if device.type == "cuda" else 0)
    buf, views = _WORK.get(where, (None, None))
    got = views.get((m, k)) if views is not None else None
    if got is not None:
        return got
    off = -(-m * k // 16) * 16  # the scales 16-byte aligned, as a fresh allocation is
    if buf is None or buf.numel() < off + 4 * m:
        # A replaced buffer is freed in stream order: the launches already enqueued on it still read it.
        buf = torch.empty(max(off + 4 * m, 2 * (buf.numel() if buf is not None else 0)), dtype=torch.uint8,
                          device=device)
        views = {}
        _WORK[where] = (buf, views)
    got = views[(m, k)] = (buf[: m * k].view(torch.float8_e4m3fn).view(m, k), buf[off: off + 4 * m].view(torch.float32))
    return got


def run(p: Plan, x: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor,
        bias: torch.Tensor | None) -> torch.Tensor | None:
    """The op's output for the call ``lookup`` found ``p`` for, or None (nothing launched) while a launch hook is
    set: then the dispatcher's path makes the launches, through Triton's, which the hook sees."""
    q, s = _codes(p.device, p.m, p.k)
    out = torch.empty((p.m, p.n), dtype=p.dtype, device=p.device)
    if not run_direct(p.quant, p.m, (x, q, s, mode, p.m, p.k, p.sx)):
        return None
    run_direct(p.gemm, p.grid, (TmaArg(q, *p.q_desc), TmaArg(upper, *p.w_desc), out, s,
                                out if bias is None else bias, mode, p.ws, p.sem, p.m, p.n, p.k, p.n, p.w_scale))
    return out


def clear() -> None:
    """Drops every plan and codes buffer (tests; a process that reloads its tables)."""
    _PLANS.clear()
    _WORK.clear()
