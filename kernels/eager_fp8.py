"""Eager FP8 calls, prepared once per layer and M.

Why: an eager call of the op in FP8 mode enqueues ``act_quant`` and a GEMM (the Gluon FP8 kernel below
``LARGE_M_THRESHOLD`` where its table says, cuBLASLt's from there). On the H200 boxes its Python took 50-83 us
against 13-30 us of GPU work at M <= 64, so eager do_bench rows timed the host about half the time
(docs/BENCHMARKS.md, "Kernels v16" and its re-run); on a slow host the cuBLASLt path at M = 1024 did too
("Kernels v18"). Most of that Python re-derives, on every call, what is the same for every call of a layer at
one M: tiles, constexprs, specializations, the weight's TMA descriptor, the launch records.

So the first such call of a (layer, M) takes the dispatcher's path, and ``record`` (Gluon) or ``record_cublaslt``
(up to ``LT_MAX_M``) keeps what it ran. Later calls look it up (``lookup``) by what decides it (x's shape, dtype,
strides and alignment; the plane; the mode tensor; the pre-scale; the bias), take x's codes and scales from one
buffer per stream, allocate the output, and run the same kernels with the same arguments (``run``): both launches
through ``fast_launch.run_direct``, or the quantization's and then ``torch._scaled_mm``. They are taken only when
the host mirror says FP8, outside CUDA-graph captures, while no launch hook (profiler) is set and while the
dispatcher's picks are those the plan was made under (the FP8 table's config, cuBLASLt, PDL, split-K:
``triton_dispatch`` checks); any other call takes the dispatcher's path. ``NESTEDFP_EAGER_PLANS=0`` turns the plans
off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from kernels import cublaslt_fp8, gluon_fp8
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


class LtPlan(NamedTuple):
    """One layer's eager FP8 call at one M on cuBLASLt (from ``LARGE_M_THRESHOLD``): the quantization's record,
    then ``torch._scaled_mm`` on the plane as stored (``kernels.cublaslt_fp8``)."""

    quant: object  # fast_launch's record of act_quant's launch
    m: int
    n: int
    k: int
    sx: int
    dtype: torch.dtype
    device: torch.device
    w_scale: torch.Tensor  # [1, N] fp32, cublaslt_fp8's per-layer-shape weight scale
    picks: tuple


LT_MAX_M = 2048  # cuBLASLt calls are prepared up to this M: past it the GPU work outlasts the host's several times

_PLANS: dict[tuple, Plan | LtPlan] = {}


def _key(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
         bias: torch.Tensor | None) -> tuple:
    """What decides the call's launches, besides the tables (fixed once loaded) and the mode's value."""
    return (x2d.shape, x2d.dtype, x2d.stride(), x2d.data_ptr() & 15, x2d.get_device(), upper.data_ptr(),
            upper.shape, upper.dtype, mode.data_ptr(), scale_exp,
            None if bias is None else (bias.data_ptr(), bias.dtype))


def record(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int, bias: torch.Tensor | None,
           cfg: tuple[int, ...], pdl: bool, picks: Callable[[], tuple]) -> None:
    """Keeps the launches the dispatcher just made for this eager FP8 call: ``act_quant`` (a plain launch), then
    the Gluon GEMM with config ``cfg`` (PDL as ``pdl`` says), under the dispatcher's ``picks()`` (asked only when
    a plan is kept). Nothing is kept until both were launched directly (from their second call on)."""
    key = _new_key(x2d, upper, mode, scale_exp, bias)
    if key is None:
        return
    m, k = x2d.shape
    n = upper.shape[0]
    q, s, quant = _quant_record(x2d, mode)
    out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    grid, args, consts, warps, stages, spec, pdl = gluon_fp8.gemm_launch(q, s, upper, mode, scale_exp, bias, out,
                                                                         cfg[:4], cfg[4], pdl)
    gemm = direct_record(gluon_fp8.nested_fp8_rs_kernel, consts, warps, stages, spec, pdl)
    if quant is None or gemm is None:
        return
    q_desc, w_desc, *_, ws, sem, _m, _n, _k, _so, w_scale = args
    _store(key, Plan(quant, gemm, grid, m, n, k, x2d.stride(0), x2d.dtype, x2d.device, tuple(q_desc[1:]),
                     tuple(w_desc[1:]), ws, sem, w_scale, picks()))


def record_cublaslt(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
                    bias: torch.Tensor | None, picks: Callable[[], tuple]) -> None:
    """Keeps what the dispatcher just ran for this eager FP8 call on cuBLASLt (``act_quant``, a plain launch, then
    ``cublaslt_fp8.scaled_mm_into``), up to ``LT_MAX_M``, under the dispatcher's ``picks()``."""
    key = _new_key(x2d, upper, mode, scale_exp, bias) if x2d.shape[0] <= LT_MAX_M else None
    if key is None:
        return
    quant = _quant_record(x2d, mode)[2]
    if quant is None:
        return
    m, k = x2d.shape
    _store(key, LtPlan(quant, m, upper.shape[0], k, x2d.stride(0), x2d.dtype, x2d.device,
                       cublaslt_fp8.weight_scale(upper, scale_exp), picks()))


def _new_key(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
             bias: torch.Tensor | None) -> tuple | None:
    """The call's key where plans are on and it has none yet, else None."""
    if not ENABLED:
        return None
    key = _key(x2d, upper, mode, scale_exp, bias)
    return None if key in _PLANS else key


def _store(key: tuple, plan: Plan | LtPlan) -> None:
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan


def _quant_record(x2d: torch.Tensor, mode: torch.Tensor) -> tuple:
    """(codes, scales, act_quant's launch record or None) for x2d: what both kinds of plan launch first."""
    m, k = x2d.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    s = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    _, _, consts, warps, stages, spec, pdl = act_quant_launch(x2d, q, s, mode)
    return q, s, direct_record(act_quant_kernel, consts, warps, stages, spec, pdl)


def _capturing(x: torch.Tensor) -> bool:
    """A CUDA-graph capture is under way on x's stream: its calls take the device pick."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def lookup(x: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
           bias: torch.Tensor | None) -> Plan | LtPlan | None:
    """The plan of this call if one was recorded and the call is eager in FP8 mode by the host mirror; the caller
    checks that its picks still hold (``Plan.picks``)."""
    if not _PLANS or x.dim() != 2 or host_mode(mode) != "fp8":  # FP16-mode calls stop here, before the key
        return None
    p = _PLANS.get(_key(x, upper, mode, scale_exp, bias))
    return None if p is None or _capturing(x) else p


# Per (device, stream): a buffer for x's codes and scales, and its [M, K] / [M] views by (M, K). One buffer serves
# every planned call on a stream: each call's act_quant is a plain launch, so it starts only after the GEMM that
# read the codes before (stream order); no planned call runs inside a capture.
_WORK: dict[tuple[int, int], tuple[torch.Tensor, dict]] = {}


def _codes(device: torch.device, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x's codes and scales (also as an [M, 1] column) for a planned call, in the stream's buffer: two allocations
    fewer per call."""
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
    s = buf[off: off + 4 * m].view(torch.float32)
    got = views[(m, k)] = (buf[: m * k].view(torch.float8_e4m3fn).view(m, k), s, s.view(m, 1))
    return got


def run(p: Plan, x: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor,
        bias: torch.Tensor | None) -> torch.Tensor | None:
    """The op's output for the call ``lookup`` found ``p`` for, or None (nothing launched) while a launch hook is
    set: then the dispatcher's path makes the launches, through Triton's, which the hook sees."""
    q, s, s_col = _codes(p.device, p.m, p.k)
    out = torch.empty((p.m, p.n), dtype=p.dtype, device=p.device)
    if not run_direct(p.quant, p.m, (x, q, s, mode, p.m, p.k, p.sx)):
        return None
    if type(p) is LtPlan:
        cublaslt_fp8.scaled_mm_out(q, s_col, upper, p.w_scale, bias, out)
        return out
    run_direct(p.gemm, p.grid, (TmaArg(q, *p.q_desc), TmaArg(upper, *p.w_desc), out, s,
                                out if bias is None else bias, mode, p.ws, p.sem, p.m, p.n, p.k, p.n, p.w_scale))
    return out


def clear() -> None:
    """Drops every plan and codes buffer (tests; a process that reloads its tables)."""
    _PLANS.clear()
    _WORK.clear()
