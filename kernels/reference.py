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


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance between same-place 16-bit values of ``a`` and ``b``, in units in the last place (as
    bit patterns: adjacent values of one sign are one apart)."""
    return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())


def silu_mul_codes_outputs(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty ``(x, codes, scales)`` for ``nestedfp::silu_mul_codes`` on ``gate_up`` [..., 2 * d]."""
    lead, d = gate_up.shape[:-1], gate_up.shape[-1] // 2
    return (gate_up.new_empty((*lead, d)), gate_up.new_empty((*lead, d), dtype=torch.float8_e4m3fn),
            gate_up.new_empty((*lead, 1), dtype=torch.float32))


def silu_mul_codes_reference(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x = silu(gate) * up`` rounded once from fp32, with ``quantize_per_token(x)``: all three whatever the
    mode (the CUDA kernel, ``kernels.silu_mul_codes``, writes only what the mode reads)."""
    d = gate_up.shape[-1] // 2
    x = (F.silu(gate_up[..., :d].float()) * gate_up[..., d:].float()).to(gate_up.dtype)
    return (x, *quantize_per_token(x))


def rms_norm_codes_outputs(x: torch.Tensor, residual: bool) -> tuple[torch.Tensor, ...]:
    """Empty ``(y, [new residual,] codes, scales)`` for ``nestedfp::[add_]rms_norm_codes`` on x [..., n]."""
    lead = x.shape[:-1]
    res = (x.new_empty(x.shape),) if residual else ()
    return (x.new_empty(x.shape), *res, x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty((*lead, 1), dtype=torch.float32))


def rms_norm_codes_reference(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, ...]:
    """vLLM's ``rms_norm`` (or ``fused_add_rms_norm`` with ``residual``) with ``quantize_per_token`` of its
    output: ``(y, [new residual,] codes, scales)``, all of them whatever the mode (the CUDA kernel,
    ``kernels.rms_norm_codes``, writes only what the mode reads, and the new residual)."""
    xf = x.float() if residual is None else x.float() + residual.float()
    y = ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(weight.dtype) * weight).to(x.dtype)
    res = () if residual is None else (xf.to(x.dtype),)
    return (y, *res, *quantize_per_token(y))


def fp8_linear_reference(
    x: torch.Tensor, upper: torch.Tensor, weight_scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """FP8 GEMM on the upper plane: per-token activation scale, fixed weight scale, fp32 accumulate."""
    x_fp8, x_scale = quantize_per_token(x)
    return fp8_linear_on_codes(x_fp8, x_scale, upper, weight_scale, bias, x.dtype)


def fp8_linear_on_codes(
    x_fp8: torch.Tensor,
    x_scale: torch.Tensor,
    upper: torch.Tensor,
    weight_scale: float,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``fp8_linear_reference`` past its quantization: x's codes and per-token scales ([..., 1]) given."""
    acc = x_fp8.float() @ upper.float().t()
    y = acc * (x_scale.float() * weight_scale)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def nested_linear(
    x: torch.Tensor, nw: NestedWeight, mode: Mode, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``y = x @ W.T`` with W read in full (fp16) or from the upper plane alone (fp8)."""
    if mode == "fp16":
        return F.linear(x, nested_merge(nw).to(x.dtype), bias)
    if mode == "fp8":
        return fp8_linear_reference(x, nw.upper, nw.fp8_weight_scale, bias)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def nested_linear_prequantized(
    x: torch.Tensor,
    x_fp8: torch.Tensor,
    x_scale: torch.Tensor,
    nw: NestedWeight,
    mode: Mode,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``nested_linear`` with x's FP8 codes computed by the caller (``quantize_per_token(x)``): FP16 mode
    reads x, FP8 mode the codes. Why the caller: under ``torch.compile`` its quantization fuses into the
    kernel that writes x (an RMSNorm, SiLU-and-mul), as vLLM's own FP8 does."""
    if mode == "fp16":
        return nested_linear(x, nw, "fp16", bias)
    if mode == "fp8":
        return fp8_linear_on_codes(x_fp8, x_scale, nw.upper, nw.fp8_weight_scale, bias, x.dtype)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
