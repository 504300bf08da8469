"""The CUDA implementation of ``nestedfp::linear``: both precisions' kernels, the mode picks on device.

At decode each call makes two launches: the FP16 GEMM, then the FP8 GEMM. Both read ``mode``
first. In FP16 mode the FP8 launch exits at once; in FP8 mode the FP16 launch quantizes the
activations per token for the FP8 GEMM instead of multiplying, so no launch is wasted there. At
larger M the quantization gets its own launch (a program per row), as an idle launch costs
microseconds there against hundreds.
No host ever reads the mode (no ``.item()``, no sync), so a CUDA graph captured once serves both
modes, and flipping the tensor takes effect at the next replay. The price is one empty launch
per linear in FP16 mode, measured by ``python -m kernels.bench``.

From M = ``GLUON_MIN_M`` up, on Hopper with Gluon, the FP16 launch is the Gluon kernel of
``kernels.gluon_fp16`` (register-fed wgmma) wherever the H200 table measured it faster than the
Triton kernel (docs/BENCHMARKS.md, "Kernels v3"); in FP8 mode it quantizes x for the FP8 GEMM,
as the Triton kernel does. ``NESTEDFP_GLUON=0`` turns it off.

Large M, eager only: when the call is not being captured into a CUDA graph and M >=
``LARGE_M_THRESHOLD``, the mode comes from the host mirror (``kernels.mode_state.host_mode``, kept by
``set_host_mode`` / vLLM's ``precision.set_mode``) and one path runs: FP16 = a merge pass into an
N x K temporary + cuBLAS (``F.linear``), faster there than the fused GEMM (docs/BENCHMARKS.md,
"Kernels v2"); FP8 = the FP8 GEMM alone. vLLM runs decode batches in CUDA graphs and prefill
chunks eagerly, so prefill gets this while graphs keep the device-side pick. A mode tensor
without a live mirror falls back to the device-side pick.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton

from kernels import gluon_fp16
from kernels.mode_state import host_mode
from kernels.triton_fp8 import _check_operands, nested_fp8_gemm
from kernels.triton_fp16 import nested_fp16_gemm
from kernels.triton_merge import merge_weight
from kernels.tuning import GluonTile, get_config, gluon_tile

LARGE_M_THRESHOLD = 1024  # eager calls with M >= this pick the path on the host (module docstring)
GLUON_MIN_M = 17  # the Gluon FP16 kernel from here up (at M = 16 it was faster on only 2 of 8 shapes)
USE_GLUON = os.environ.get("NESTEDFP_GLUON", "1") != "0"


def use_gluon(x2d: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> GluonTile | None:
    """The Gluon kernel's tile if the FP16 launch is the Gluon kernel (module docstring), else None."""
    m, k = x2d.shape
    if not (USE_GLUON and m >= GLUON_MIN_M and x2d.is_cuda):
        return None
    tile = gluon_tile(upper.shape[0], k, m)
    ok = tile and gluon_fp16.available(x2d.device.index or 0) and gluon_fp16.tma_ok(x2d, upper, lower)
    return tile if ok else None


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
    ``TRITON_INTERPRET=1`` (the CPU tests). Eager calls with M >= ``LARGE_M_THRESHOLD`` take the
    mode from its host mirror instead (module docstring); flip modes with ``set_host_mode``.
    """
    k = x.shape[-1]
    n = upper.shape[0]
    x2d = x.reshape(-1, k)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    _check_operands(x2d, upper, lower)
    m = x2d.shape[0]
    name = None
    if m >= LARGE_M_THRESHOLD and not (x2d.is_cuda and torch.cuda.is_current_stream_capturing()):
        name = host_mode(mode)
        if name == "fp16":  # exactly the reference: F.linear on the merged weight
            return F.linear(x2d, merge_weight(upper, lower, scale_exp, x2d.dtype), bias).reshape(*x.shape[:-1], n)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if name == "fp8":
        nested_fp8_gemm(x2d, upper, mode, scale_exp, bias, out, get_config("fp8", n, k, m), True, None)
    elif m:
        cfg8 = get_config("fp8", n, k, m)
        tile = use_gluon(x2d, upper, lower)
        cfg16 = None if tile else get_config("fp16", n, k, m)
        programs = (triton.cdiv(n, tile[0]) * triton.cdiv(m, tile[1]) if tile
                    else triton.cdiv(n, cfg16.block_n) * triton.cdiv(m, cfg16.block_m))
        quant = None
        # The FP16 launch quantizes x in FP8 mode while it has a program for every two rows or
        # more (decode); past that, act_quant's program-per-row launch is faster than its loop.
        if not cfg8.fused_quant and 2 * programs >= m:
            quant = (torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device),
                     torch.empty((m,), dtype=torch.float32, device=x.device))
        if tile:
            gluon_fp16.nested_fp16_gemm_rs(x2d, upper, lower, mode, scale_exp, bias, out, tile, True, quant)
        else:
            nested_fp16_gemm(x2d, upper, lower, mode, scale_exp, bias, out, cfg16, True, quant)
        nested_fp8_gemm(x2d, upper, mode, scale_exp, bias, out, cfg8, True, quant)
    return out.reshape(*x.shape[:-1], n)
