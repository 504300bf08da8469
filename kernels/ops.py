"""The ``nestedfp::linear`` custom ops: what vLLM's linear method calls.

Opaque ops (with fake implementations) so ``torch.compile`` does not trace into them and
CUDA graphs capture them whole. The precision mode is an int32 tensor that the op reads at
run time, so flipping it needs no recompile and no graph recapture.

``nestedfp::linear`` quantizes x itself in FP8 mode; ``nestedfp::linear_prequantized`` takes x's
per-token codes from the caller, who computes them with plain torch ops (``quantize_per_token``) so that
``torch.compile`` fuses them into the kernel that writes x, as vLLM's own FP8 gets its quantization fused.
"""

from __future__ import annotations

import torch

from kernels.mode_state import MODE_CODES, host_mode, register_host_mode, set_host_mode  # noqa: F401 (re-exported)
from kernels.nested_format import NestedWeight
from kernels.reference import (
    nested_linear,
    nested_linear_prequantized,
    rms_norm_codes_outputs,
    rms_norm_codes_reference,
    silu_mul_codes_outputs,
    silu_mul_codes_reference,
)

MODE_NAMES = {code: name for name, code in MODE_CODES.items()}


def new_mode_tensor(device: torch.device | str, mode: str = "fp16") -> torch.Tensor:
    """A one-element int32 tensor holding the mode code, on the model's device (host mirror set).

    Flip it with ``set_host_mode`` (``kernels.mode_state``), never by writing it directly.
    """
    t = torch.full((1,), MODE_CODES[mode], dtype=torch.int32, device=device)
    register_host_mode(t, mode)
    return t


_LIB = torch.library.Library("nestedfp", "FRAGMENT")  # the ops' home, kept alive with this module


def nestedfp_linear(
    x: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ W.T`` with W rebuilt from both planes (mode 0) or the upper plane alone (mode 1)."""
    nw = NestedWeight(upper, lower, scale_exp)
    name = MODE_NAMES[int(mode.item())]
    return nested_linear(x, nw, name, bias)


def _nestedfp_linear_fake(x, upper, lower, mode, scale_exp, bias=None):
    return x.new_empty((*x.shape[:-1], upper.shape[0]))


def nestedfp_linear_prequantized(
    x: torch.Tensor,
    x_fp8: torch.Tensor,
    x_scale: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    mode: torch.Tensor,
    scale_exp: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``nestedfp::linear`` on x (mode 0) or on its codes ``x_fp8`` [..., K] E4M3 and scales ``x_scale``
    [..., 1] fp32 from ``quantize_per_token(x)`` (mode 1)."""
    nw = NestedWeight(upper, lower, scale_exp)
    name = MODE_NAMES[int(mode.item())]
    return nested_linear_prequantized(x, x_fp8, x_scale, nw, name, bias)


def _nestedfp_linear_prequantized_fake(x, x_fp8, x_scale, upper, lower, mode, scale_exp, bias=None):
    return x.new_empty((*x.shape[:-1], upper.shape[0]))


def nestedfp_silu_mul_codes(gate_up: torch.Tensor,
                            mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, codes, scales)`` for ``x = silu(gate_up[..., :d]) * gate_up[..., d:]``: what
    ``nestedfp::linear_prequantized`` reads, x in FP16 mode and the codes and scales in FP8 mode. The CUDA
    kernel writes only those (``kernels.silu_mul_codes``); this reference writes all three."""
    return silu_mul_codes_reference(gate_up)


def _nestedfp_silu_mul_codes_fake(gate_up, mode):
    return silu_mul_codes_outputs(gate_up)


def nestedfp_rms_norm_codes(x: torch.Tensor, weight: torch.Tensor, eps: float,
                            mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, codes, scales)`` for vLLM's ``rms_norm(x, weight, eps)``: what ``nestedfp::linear_prequantized``
    reads. The CUDA kernel writes y in FP16 mode, the codes and scales in FP8 mode (``kernels.rms_norm_codes``);
    this reference writes all three."""
    return rms_norm_codes_reference(x, None, weight, eps)


def _nestedfp_rms_norm_codes_fake(x, weight, eps, mode):
    return rms_norm_codes_outputs(x, False)


def nestedfp_add_rms_norm_codes(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                                mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, new residual, codes, scales)`` for vLLM's ``fused_add_rms_norm(x, residual, weight, eps)``; the
    new residual is written in both modes, the rest as in ``nestedfp::rms_norm_codes``."""
    return rms_norm_codes_reference(x, residual, weight, eps)


def _nestedfp_add_rms_norm_codes_fake(x, residual, weight, eps, mode):
    return rms_norm_codes_outputs(x, True)


def define_op(name: str, schema: str, reference, fake, cuda=None) -> None:
    """``nestedfp::<name>``: the reference on every device, ``cuda`` on CUDA, ``fake`` for tracing.

    Registered on a ``torch.library.Library`` as vLLM's ``direct_register_custom_op`` does, not with
    ``torch.library.custom_op``: that wrapper runs Python on every call (its autograd and aliasing checks),
    25-50 us a call on the H200 box against 2-20 us this way (docs/BENCHMARKS.md, "The ops registered on a
    ``torch.library.Library``"), and eager calls are how vLLM runs prefill.
    """
    _LIB.define(name + schema)
    _LIB.impl(name, reference, "CompositeExplicitAutograd")
    if cuda is not None:
        _LIB.impl(name, cuda, "CUDA")
    torch.library.register_fake(f"nestedfp::{name}", fake, lib=_LIB)


try:
    from kernels.rms_norm_codes import add_rms_norm_codes as add_rms_norm_codes_cuda
    from kernels.rms_norm_codes import rms_norm_codes as rms_norm_codes_cuda
    from kernels.silu_mul_codes import silu_mul_codes as silu_mul_codes_cuda
    from kernels.triton_dispatch import nested_linear_cuda, nested_linear_prequantized_cuda
except ImportError:  # Triton absent: the reference serves every device
    nested_linear_cuda = nested_linear_prequantized_cuda = silu_mul_codes_cuda = None
    rms_norm_codes_cuda = add_rms_norm_codes_cuda = None

define_op("linear", "(Tensor x, Tensor upper, Tensor lower, Tensor mode, int scale_exp, Tensor? bias=None) -> Tensor",
          nestedfp_linear, _nestedfp_linear_fake, nested_linear_cuda)
define_op("linear_prequantized",
          "(Tensor x, Tensor x_fp8, Tensor x_scale, Tensor upper, Tensor lower, Tensor mode, int scale_exp, "
          "Tensor? bias=None) -> Tensor",
          nestedfp_linear_prequantized, _nestedfp_linear_prequantized_fake, nested_linear_prequantized_cuda)
define_op("silu_mul_codes", "(Tensor gate_up, Tensor mode) -> (Tensor, Tensor, Tensor)",
          nestedfp_silu_mul_codes, _nestedfp_silu_mul_codes_fake, silu_mul_codes_cuda)
define_op("rms_norm_codes", "(Tensor x, Tensor weight, float eps, Tensor mode) -> (Tensor, Tensor, Tensor)",
          nestedfp_rms_norm_codes, _nestedfp_rms_norm_codes_fake, rms_norm_codes_cuda)
define_op("add_rms_norm_codes",
          "(Tensor x, Tensor residual, Tensor weight, float eps, Tensor mode) -> (Tensor, Tensor, Tensor, Tensor)",
          nestedfp_add_rms_norm_codes, _nestedfp_add_rms_norm_codes_fake, add_rms_norm_codes_cuda)
