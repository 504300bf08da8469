"""Plain-torch NestedFP GEMMs: the CPU path and the oracle for the Triton kernels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from kernels.nested_format import NestedWeight, nested_merge

Mode = Literal["fp16", "fp8"]
MODES: tuple[Mode, ...] = ("fp16", "fp8")
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
_MIN_ACT_SCALE = 1e-12


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token E4M3 quantization: returns ``(x_fp8, scale)``, ``x ~ x_fp8 * scale``."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(_MIN_ACT_SCALE)
    x_fp8 = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return x_fp8, scale


def fp8_linear_reference(
    x: torch.Tensor, upper: torch.Tensor, weight_scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """FP8 GEMM on the upper plane: per-token activation scale, fixed weight scale, fp32 accumulate."""
    x_fp8, x_scale = quantize_per_token(x)
    acc = x_fp8.float() @ upper.float().t()
    y = acc * (x_scale * weight_scale)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def nested_linear(
    x: torch.Tensor, nw: NestedWeight, mode: Mode, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``y = x @ W.T`` with W read in full (fp16) or from the upper plane alone (fp8)."""
    if mode == "fp16":
        return F.linear(x, nested_merge(nw).to(x.dtype), bias)
    if mode == "fp8":
        return fp8_linear_reference(x, nw.upper, nw.fp8_weight_scale, bias)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
