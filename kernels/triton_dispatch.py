"""The CUDA implementation of ``nestedfp::linear``: both precisions' kernels, one mode tensor.

Two ways to pick the precision:

- **On the device** (captured into a CUDA graph, or a mode tensor without a host mirror): each call
  makes two launches, the FP16 GEMM then the FP8 GEMM (three with the Gluon FP8 GEMM, below), and all
  read ``mode`` first. In FP16 mode the FP8 launch exits at once; in FP8 mode the FP16 launch
  quantizes the activations per token for the Triton FP8 GEMM instead of multiplying, so no launch is
  wasted there (at larger M the quantization gets its own program-per-row launch). No host ever
  reads the mode (no ``.item()``, no sync), so a CUDA graph captured once serves both modes, and
  flipping the tensor takes effect at the next replay. The price is one empty launch per linear in
  FP16 mode, measured by ``python -m kernels.bench``.
  Opt-in (``USE_CONDITIONAL``), where ``kernels.cuda_conditional`` works (a CUDA >= 12.8
  driver): a capture below ``LARGE_M_THRESHOLD`` holds instead a conditional node on the mode
  with each mode's eager launches as its two bodies: no idle launch, and FP8 mode can use
  cuBLASLt (from ``CUBLASLT_FP8_MIN_M``), which cannot read the mode itself. A replay runs exactly
  what an eager call of its mode runs, so the outputs are equal bit for bit. Off by default: on
  the H200 the node cost more than it saved.
- **On the host** (``HOST_PICK``, every eager call whose mode tensor has a live host mirror,
  ``kernels.mode_state.host_mode``, kept by ``set_host_mode`` / vLLM's ``precision.set_mode``): one
  path runs. FP16: the FP16 GEMM alone; from ``LARGE_M_THRESHOLD`` up a merge pass into an N x K
  temporary + cuBLAS (``F.linear``), faster there than the Triton GEMM (docs/BENCHMARKS.md,
  "Kernels v2"), and than the Gluon one from the M the H200 table gives per shape (``fp16_on_cublas``).
  FP8: the FP8 GEMM with its quantization; from ``LARGE_M_THRESHOLD`` up, quantization + cuBLASLt's FP8
  GEMM on the upper plane as stored (``kernels.cublaslt_fp8``) where cuBLASLt takes the shape. Why: an
  eager call is enqueued by Python, and on the H200 box that host work outlasted the GPU work of small-M
  calls (docs/BENCHMARKS.md, "Kernels v4"); skipping the idle launch and its buffers cuts it. vLLM runs
  decode batches in CUDA graphs (device pick) and prefill chunks eagerly (host pick).

From M = ``GLUON_MIN_M`` up, on Hopper with Gluon, the FP16 launch is the Gluon kernel of
``kernels.gluon_fp16`` (register-fed wgmma) wherever the H200 table measured it faster than the
Triton kernel (docs/BENCHMARKS.md, "Kernels v3" and "v6"); in FP8 mode it quantizes x for the FP8 GEMM,
as the Triton kernel does. ``NESTEDFP_GLUON=0`` turns it off.

FP8 mode's GEMM is the Gluon kernel of ``kernels.gluon_fp8`` wherever its H200 table has a config
(``use_gluon_fp8``): up to M = 256, where it beat the Triton FP8 kernel, and from 512 up to 8192 on the
shapes where it beat the path that runs without it (the Triton kernel below ``LARGE_M_THRESHOLD``,
cuBLASLt's from there: ``fp8_on_cublaslt`` gives way to the table; docs/BENCHMARKS.md, "Kernels v16").
It takes x from ``act_quant``, and both are programmatic dependent launches
(PDL) of the launch before: on the device, the FP16 launch (which then quantizes nothing), ``act_quant``
(it reads only x, so it runs during the FP16 launch), then the GEMM, whose weight prefetch overlaps the
quantization; on the host, ``act_quant`` then the GEMM. Each PDL launch waits for the one before it ends,
so stream order holds for whatever follows. In a graph that is three launches in FP16 mode, two of them
idle and overlapped (the engine's FP16 throughput did not move: docs/BENCHMARKS.md, "Engine v7"). From
M = 512 the table says per entry whether the GEMM is a PDL launch at all (``tuning.fp8_pdl``).
``NESTEDFP_GLUON_FP8=0`` / ``NESTEDFP_PDL=0`` turn the kernel / the dependent launches off.

On the device pick, where the two Gluon configs pair (``gluon_dual.pairable``: the same weight rows and
the same grid), the launches are two: ``act_quant`` (idle in FP16 mode), then ``kernels.gluon_dual``'s
kernel, which runs either mode's GEMM as its dependent. On the H200 that made FP8 mode 2-3% faster in
graphs at M <= 128 and left FP16 mode as it was (docs/BENCHMARKS.md, "Idle launches in CUDA graphs").
``NESTEDFP_DUAL=0`` keeps three.

``nested_linear_prequantized_cuda`` (the op ``nestedfp::linear_prequantized``) takes x's codes from its
caller, whose quantization ``torch.compile`` fuses into the kernel that writes x. It launches what the
above launches minus every ``act_quant``: on the device pick, the dual kernel alone where the tiles pair
(then a plain launch: the kernel before it is the caller's, which grants no early start), else the FP16
GEMM then the FP8 GEMM; on the host pick, one precision's GEMM.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels import (cublaslt_fp8, cuda_conditional, eager_fp8, gluon_common, gluon_dual, gluon_fp8, gluon_fp16,
                     split_k)
from kernels.fast_launch import cdiv
from kernels.mode_state import host_mode
from kernels.triton_fp8 import _check_operands, act_quant, nested_fp8_gemm
from kernels.triton_fp16 import nested_fp16_gemm
from kernels.triton_merge import merge_weight
from kernels.tuning import (
    GluonFp8Config,
    GluonTile,
    fp8_pdl,
    get_config,
    gluon_fp8_config,
    gluon_tile,
    merge_from,
)

HOST_PICK = True  # eager calls with a host mirror pick the precision on the host (module docstring)
LARGE_M_THRESHOLD = 1024  # host pick from this M up: merge + cuBLAS (FP16), cuBLASLt (FP8)
GLUON_MIN_M = 1  # the table decides at every M: with word loads (2026-11-22) Gluon beat the Triton kernel
# at M = 1 on 6 of 8 shapes and at M = 16 on 7 (docs/BENCHMARKS.md, "Kernels v6"); it was 17 before
USE_GLUON = os.environ.get("NESTEDFP_GLUON", "1") != "0"
# FP8 mode's GEMM is the Gluon kernel of kernels.gluon_fp8 where its H200 table has a config (up to M = 256),
# launched as a programmatic dependent of the launch that quantizes x (NESTEDFP_PDL=0: plain launches).
USE_GLUON_FP8 = os.environ.get("NESTEDFP_GLUON_FP8", "1") != "0"
USE_PDL = os.environ.get("NESTEDFP_PDL", "1") != "0"
# On the device pick, where both Gluon tables give a tile of the same weight rows, one launch holds both GEMMs
# (kernels.gluon_dual), after act_quant: two launches instead of three (NESTEDFP_DUAL=0: three).
USE_DUAL = USE_PDL and os.environ.get("NESTEDFP_DUAL", "1") != "0"
# Captures hold a conditional node per op: opt-in (NESTEDFP_CONDITIONAL=1), since on the H200 the node
# cost about 7 us per op, more than it saved (docs/BENCHMARKS.md, "Conditional graph nodes").
USE_CONDITIONAL = os.environ.get("NESTEDFP_CONDITIONAL", "0") == "1"
# With conditional nodes, FP8 mode runs on cuBLASLt from this M up (eager calls too, so that replays
# equal them): where it beat the Triton FP8 kernel inside a branch (kernels.cond_bench, same run).
CUBLASLT_FP8_MIN_M = 128


def use_gluon(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> GluonTile | None:
    """The Gluon kernel's tile if the FP16 launch is the Gluon kernel (module docstring), else None."""
    m, k = x2d.shape
    if not (USE_GLUON and m >= GLUON_MIN_M and x2d.is_cuda):
        return None
    tile = gluon_tile(upper.shape[0], k, m)
    ok = tile and gluon_fp16.available(x2d.device.index or 0) and gluon_fp16.tma_ok(x2d, upper, lower)
    return tile if ok else None


def use_gluon_fp8(x2d: torch.Tensor, upper: torch.Tensor) -> GluonFp8Config | None:
    """The Gluon FP8 config if FP8 mode's GEMM is the Gluon kernel (module docstring), else None. x's
    codes are a fresh contiguous [M, K] tensor, so TMA needs only K % 16 == 0 and an aligned plane."""
    m, k = x2d.shape
    if not (USE_GLUON_FP8 and x2d.is_cuda and k % 16 == 0 and upper.data_ptr() % 16 == 0):
        return None
    cfg = gluon_fp8_config(upper.shape[0], k, m)
    return cfg if cfg and gluon_common.available(x2d.device.index or 0) else None


def nested_linear_cuda(
    x: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ W.T (+ bias)``: W from both planes if ``mode[0] == 0``, the upper plane if 1.

    ``x``: [..., K] float16 or bfloat16 (output in x's dtype); ``upper``/``lower``: [N, K];
    ``mode``: one-element int32 tensor on x's device. Also runs on CPU tensors under
    ``TRITON_INTERPRET=1`` (the CPU tests). Eager calls take the mode from its host mirror
    (module docstring), so flip modes with ``set_host_mode``, never by writing the tensor.
    """
    if HOST_PICK:  # an eager FP8 call prepared before (kernels.eager_fp8), if its picks still hold
        plan = eager_fp8.lookup(x, upper, mode, scale_exp, bias)
        if plan is not None and plan.picks == _fp8_picks(x, upper):
            out = eager_fp8.run(plan, x, upper, mode, bias)
            if out is not None:
                return out
    return nested_linear_picked(x, upper, lower, mode, scale_exp, bias, HOST_PICK)


def _fp8_picks(x2d: torch.Tensor, upper: torch.Tensor) -> tuple:
    """What an eager FP8 call's launches depend on beyond its operands: the Gluon FP8 config (None: not that
    path), whether cuBLASLt takes the call, PDL and split-K being on. ``eager_fp8`` plans keep these."""
    return use_gluon_fp8(x2d, upper), fp8_on_cublaslt(x2d, upper), USE_PDL, split_k.ENABLED


def nested_linear_prequantized_cuda(
    x: torch.Tensor,
    x_fp8: torch.Tensor,
    x_scale: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``nested_linear_cuda`` with x's codes given: ``x_fp8`` [..., K] E4M3 and ``x_scale`` [..., 1] fp32,
    as ``quantize_per_token(x)`` makes them. FP8 mode multiplies those codes and launches no quantization
    (module docstring); FP16 mode reads x, as ``nested_linear_cuda`` does."""
    k = x.shape[-1]
    if x_fp8.shape != x.shape or x_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError(f"x_fp8 must be float8_e4m3fn of x's shape {tuple(x.shape)}, got {x_fp8.dtype} "
                         f"{tuple(x_fp8.shape)}")
    if x_scale.numel() != x.numel() // max(k, 1) or x_scale.dtype != torch.float32:
        raise ValueError(f"x_scale must hold one float32 per row of x, got {x_scale.dtype} {tuple(x_scale.shape)}")
    q = x_fp8.reshape(-1, k)
    if not q.is_contiguous() or q.data_ptr() % 16:  # the FP8 GEMMs read [M, K] codes by TMA or as one block
        q = q.clone(memory_format=torch.contiguous_format)
    return nested_linear_picked(x, upper, lower, mode, scale_exp, bias, HOST_PICK, (q, x_scale.reshape(-1)))


def nested_linear_picked(x: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, mode: torch.Tensor,
                         scale_exp: int, bias: torch.Tensor | None, host_pick: bool,
                         quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``nested_linear_cuda`` with the pick given: ``host_pick=False`` runs eager calls as CUDA
    graphs run them (both launches; the warm-up compiles that path with it). ``quant``: x's codes
    ([M, K] contiguous, [M]) from the caller (``nested_linear_prequantized_cuda``)."""
    k = x.shape[-1]
    n = upper.shape[0]
    x2d = x if x.dim() == 2 else x.reshape(-1, k)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    m = _check_operands(x2d, upper, lower)[0]
    eager = not (x2d.is_cuda and torch.cuda.is_current_stream_capturing())
    name = host_mode(mode) if host_pick and eager else None
    out = None
    if name == "fp16" and fp16_on_cublas(x2d, upper, lower):  # the reference exactly: F.linear, merged weight
        out = F.linear(x2d, merge_weight(upper, lower, scale_exp, x2d.dtype), bias)
    elif name == "fp8" and fp8_on_cublaslt(x2d, upper):
        out = cublaslt_fp8.nested_fp8_scaled_mm(x2d, upper, mode, scale_exp, bias, quant)  # None if torch refused
        if out is not None and quant is None:  # what later eager calls like it reuse
            eager_fp8.record_cublaslt(x2d, upper, mode, scale_exp, bias, lambda: _fp8_picks(x2d, upper))
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        if m and not eager and conditional(x2d):
            _capture_conditional(x2d, upper, lower, mode, scale_exp, bias, out, quant)
        elif m:
            _launch(x2d, upper, lower, mode, scale_exp, bias, out, name, quant)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


def conditional(x2d: torch.Tensor) -> bool:
    """Whether a capture of this call holds a conditional node (module docstring)."""
    return (USE_CONDITIONAL and x2d.is_cuda and x2d.shape[0] < LARGE_M_THRESHOLD
            and cuda_conditional.available(x2d.device.index or 0))


def fp16_on_cublas(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> bool:
    """FP16 mode's eager GEMM is merge + cuBLAS for this call: from ``LARGE_M_THRESHOLD`` up, except below
    the M from which the H200 sweep measured it faster than the Gluon kernel for this shape
    (``tuning.merge_from``), where that kernel runs."""
    m = x2d.shape[0]
    if m < LARGE_M_THRESHOLD:
        return False
    start = merge_from(upper.shape[0], x2d.shape[1])
    return start is None or m >= start or use_gluon(x2d, upper, lower) is None


def fp8_on_cublaslt(x2d: torch.Tensor, upper: torch.Tensor) -> bool:
    """FP8 mode's GEMM is cuBLASLt's for this call, eager or captured (module docstring): by M, unless the
    Gluon FP8 table measured its kernel faster at this M."""
    m = x2d.shape[0]  # the M tests first: every eager FP8 call asks, and usable() costs more
    by_m = m >= LARGE_M_THRESHOLD or (m >= CUBLASLT_FP8_MIN_M and conditional(x2d))
    return by_m and use_gluon_fp8(x2d, upper) is None and cublaslt_fp8.usable(x2d, upper)


def _capture_conditional(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, mode: torch.Tensor,
                         scale_exp: int, bias: torch.Tensor | None, out: torch.Tensor,
                         given: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Capture each mode's eager launches as the two bodies of a conditional node on ``mode``; ``given``:
    x's codes from the caller."""
    m, k = x2d.shape
    quant = given or (torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device),
                      torch.empty((m,), dtype=torch.float32, device=x2d.device))  # bodies must not allocate
    cuda_conditional.if_else(mode, lambda: _fp8_into(x2d, upper, mode, scale_exp, bias, out, quant, given is not None),
                             lambda: _launch(x2d, upper, lower, mode, scale_exp, bias, out, "fp16"))


def _fp8_into(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int, bias: torch.Tensor | None,
              out: torch.Tensor, quant: tuple[torch.Tensor, torch.Tensor], quantized: bool = False) -> None:
    """FP8 mode's eager launches (as ``nested_linear_picked`` makes them) into ``out``, allocating nothing;
    ``quantized``: ``quant`` already holds x's codes."""
    if fp8_on_cublaslt(x2d, upper):
        if not quantized:
            act_quant(x2d, mode, quant)
        try:
            cublaslt_fp8.scaled_mm_into(*quant, upper, scale_exp, bias, out)
            return
        except RuntimeError:  # refused before any launch; the capture goes on with the Triton kernel
            cublaslt_fp8.refuse(x2d, upper)
            nested_fp8_gemm(x2d, upper, mode, scale_exp, bias, out, None, True, quant)
            return
    g8 = use_gluon_fp8(x2d, upper)
    m, k = x2d.shape
    if quantized or g8 is not None or not get_config("fp8", upper.shape[0], k, m).fused_quant:
        if not quantized:  # quantized by a launch first
            act_quant(x2d, mode, quant)
        _fp8_gemm(x2d, upper, mode, scale_exp, bias, out, quant, g8, pdl=False)  # no PDL edge inside a branch
    else:
        _fp8_gemm(x2d, upper, mode, scale_exp, bias, out, None, g8)


def _fp8_gemm(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int, bias: torch.Tensor | None,
              out: torch.Tensor, quant: tuple[torch.Tensor, torch.Tensor] | None, g8: GluonFp8Config | None,
              pdl: bool = True) -> None:
    """FP8 mode's GEMM into ``out``, on x's codes ``quant`` (from the launch before, or from the caller of
    ``linear_prequantized``; None: quantized here): the Gluon kernel with config ``g8`` (``use_gluon_fp8``,
    the caller's), else the Triton one. The Gluon kernel is a programmatic dependent of the launch before
    (``pdl``), so its weight prefetch overlaps that launch; it reads the codes only after that launch ends."""
    m, k = x2d.shape
    if g8 is None:
        nested_fp8_gemm(x2d, upper, mode, scale_exp, bias, out, get_config("fp8", upper.shape[0], k, m), True, quant)
        return
    xq, xs = quant if quant is not None else act_quant(x2d, mode)
    gluon_fp8.nested_fp8_gemm_rs(xq, xs, upper, mode, scale_exp, bias, out, g8[:4], True, split_k=g8[4],
                                 pdl=pdl and USE_PDL and fp8_pdl(g8))


def _launch(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, mode: torch.Tensor, scale_exp: int,
            bias: torch.Tensor | None, out: torch.Tensor, name: str | None,
            given: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """The Triton/Gluon launches into ``out``: one precision's (``name``) or both (None: device pick).
    ``given``: x's codes from the caller; then no launch quantizes."""
    m, k = x2d.shape
    n = upper.shape[0]
    if name == "fp8":  # on given codes a plain launch: the kernel before is the caller's
        g8 = use_gluon_fp8(x2d, upper)
        _fp8_gemm(x2d, upper, mode, scale_exp, bias, out, given, g8, pdl=given is None)
        if g8 is not None and given is None and x2d.is_cuda:  # what later eager calls like it reuse
            eager_fp8.record(x2d, upper, mode, scale_exp, bias, g8, USE_PDL and fp8_pdl(g8),
                             lambda: _fp8_picks(x2d, upper))
        return
    tile = use_gluon(x2d, upper, lower)
    cfg16 = None if tile else get_config("fp16", n, k, m)
    quant = given
    g8 = use_gluon_fp8(x2d, upper) if name is None else None
    if name is None and USE_DUAL and gluon_dual.pairable(tile, g8, m):  # two launches, one of them idle and brief
        if given is None:
            quant = act_quant(x2d, mode)
        gluon_dual.nested_dual_gemm_rs(x2d, upper, lower, mode, scale_exp, bias, out, quant, tile, g8,
                                       pdl=given is None)
        return
    fp16_quant = None  # codes the FP16 launch writes in FP8 mode
    if name is None and g8 is None and given is None:
        programs = (gluon_fp16.programs(tile, m, n, k, x2d.device) if tile
                    else cdiv(n, cfg16.block_n) * cdiv(m, cfg16.block_m) * cfg16.split_k)
        # The FP16 launch quantizes x in FP8 mode while it has a program for every two rows or
        # more (decode); past that, act_quant's program-per-row launch is faster than its loop.
        if 2 * programs >= m and not get_config("fp8", n, k, m).fused_quant:
            quant = fp16_quant = (torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device),
                                  torch.empty((m,), dtype=torch.float32, device=x2d.device))
    if tile:
        gluon_fp16.nested_fp16_gemm_rs(x2d, upper, lower, mode, scale_exp, bias, out, tile, True, fp16_quant)
    else:
        nested_fp16_gemm(x2d, upper, lower, mode, scale_exp, bias, out, cfg16, True, fp16_quant)
    if name is None:
        if g8 is not None and given is None:  # act_quant reads only x: it may run during the FP16 launch, and
            quant = act_quant(x2d, mode, pdl=USE_PDL)  # so may the GEMM's weight prefetch
        _fp8_gemm(x2d, upper, mode, scale_exp, bias, out, quant, g8)
