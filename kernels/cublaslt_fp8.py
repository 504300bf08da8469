"""NestedFP8 on cuBLASLt, for eager large-M calls whose mode the host knows.

The upper plane already is an E4M3 weight in the layout cuBLASLt's FP8 GEMM wants (N x K
row-major = K x N column-major), with the fixed weight scale 2**(-8 + scale_exp) as its row-wise
scale. So at large M in FP8 mode the op quantizes x per token (``triton_fp8.act_quant``) and
calls ``torch._scaled_mm`` on the plane as stored: no copy, no second weight. Why: from M = 1024
up cuBLASLt's FP8 GEMM is faster than the Triton FP8 kernel on the H200 (docs/BENCHMARKS.md,
"Kernels v4", both timed in one run). It cannot read a device-side mode, so inside CUDA graphs it
runs behind a conditional node (``kernels.cuda_conditional``). ``NESTEDFP_CUBLASLT_FP8=0`` turns it off.
"""

from __future__ import annotations

import functools
import os

import torch

from kernels.nested_format import FP8_WEIGHT_SCALE_EXP
from kernels.triton_fp8 import act_quant

USE_CUBLASLT_FP8 = os.environ.get("NESTEDFP_CUBLASLT_FP8", "1") != "0"
_weight_scales: dict[tuple, torch.Tensor] = {}  # (device, N, scale_exp) -> [1, N] fp32
_refused: set[tuple] = set()  # (dtype, N, K, M % 16) that torch refused once


@functools.cache
def _fp8_gpu(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def _shape_class(x2d: torch.Tensor, upper: torch.Tensor) -> tuple:
    return (x2d.dtype, *upper.shape, x2d.shape[0] % 16)


def usable(x2d: torch.Tensor, upper: torch.Tensor) -> bool:
    """cuBLASLt FP8 for this call: an sm_89+ GPU, N and K multiples of 16, not refused before."""
    n, k = upper.shape
    return (USE_CUBLASLT_FP8 and x2d.is_cuda and n % 16 == 0 and k % 16 == 0 and _fp8_gpu(x2d.device.index or 0)
            and _shape_class(x2d, upper) not in _refused)


def weight_scale(upper: torch.Tensor, scale_exp: int) -> torch.Tensor:
    """The [1, N] fp32 weight scale 2**(-8 + scale_exp) that ``torch._scaled_mm`` takes, one per (device, N,
    pre-scale)."""
    key = (upper.device, upper.shape[0], scale_exp)
    ws = _weight_scales.get(key)
    if ws is None:
        ws = _weight_scales[key] = torch.full((1, upper.shape[0]), 2.0 ** (FP8_WEIGHT_SCALE_EXP + scale_exp),
                                              dtype=torch.float32, device=upper.device)
    return ws


def scaled_mm_into(q: torch.Tensor, s: torch.Tensor, upper: torch.Tensor, scale_exp: int,
                   bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = q @ upper.T * (s x 2**(-8 + scale_exp)) (+ bias)`` on cuBLASLt; ``out`` [M, N] contiguous.

    Also what a captured conditional node's FP8 branch runs (``triton_dispatch``), so it allocates nothing
    but cuBLASLt's own workspace.
    """
    scaled_mm_out(q, s.view(-1, 1), upper, weight_scale(upper, scale_exp), bias, out)


def scaled_mm_out(q: torch.Tensor, s_col: torch.Tensor, upper: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``scaled_mm_into`` with x's scales as an [M, 1] column and the weight scale (``weight_scale``) given: for
    ``kernels.eager_fp8``, which keeps both per prepared call."""
    torch._scaled_mm(q, upper.t(), scale_a=s_col, scale_b=w_scale, out_dtype=out.dtype, out=out)
    if bias is not None:
        out.add_(bias)


def nested_fp8_scaled_mm(x2d: torch.Tensor, upper: torch.Tensor, mode: torch.Tensor, scale_exp: int,
                         bias: torch.Tensor | None = None,
                         quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """FP8-mode ``y = q(x) @ upper.T * (s_x * 2**(-8 + scale_exp)) + bias`` on cuBLASLt, in x's dtype.

    ``mode`` must hold FP8 (the quantization reads it). ``quant``: x's codes ([M, K], [M]) if the caller
    has them; else quantized here. None if torch refuses the call (the caller then runs the Triton
    kernel); that shape class is not tried again.
    """
    q, s = quant if quant is not None else act_quant(x2d, mode)
    y = torch.empty((x2d.shape[0], upper.shape[0]), dtype=x2d.dtype, device=x2d.device)
    try:
        scaled_mm_into(q, s, upper, scale_exp, bias, y)
    except RuntimeError:
        refuse(x2d, upper)
        return None
    return y


def refuse(x2d: torch.Tensor, upper: torch.Tensor) -> None:
    """Record that torch refused this call's shape class: ``usable`` is false for it from now on."""
    _refused.add(_shape_class(x2d, upper))
