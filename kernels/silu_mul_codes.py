"""SiLU-and-mul that writes what the next NestedFP layer reads in the current mode, and nothing else.

Why: vLLM's MLP computes ``x = silu(gate) * up`` and hands x to down_proj. To feed down_proj's FP8 GEMM
without an extra pass over x, x's per-token E4M3 codes must come out of the kernel that computes x. When
torch.compile fuses that quantization (``kernels.vllm_plugin.nestedfp_method``), its kernel cannot know the
mode, so FP16 mode computes and writes codes it never reads: the kernel before down_proj took 348 us against
204 us without them on the H200 (docs/BENCHMARKS.md, "Where the engine's GPU time goes"). This kernel reads
the mode tensor: FP16 mode writes x alone (one pass); FP8 mode writes the codes and scales alone (an absmax
pass, then a quantizing pass), not x, which the FP8 GEMM does not read.

x rounds once, from fp32 (as Inductor's fused kernel does); the codes and scales are
``kernels.reference.quantize_per_token`` of that rounded x, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.fast_launch import launch
from kernels.reference import quantize_per_token, silu_mul_codes_outputs, silu_mul_codes_reference, ulps_apart
from kernels.triton_fp8 import FP8_MAX, act_scale, div_by_scale, to_e4m3

CHUNK = 2048  # values of x a step: 8 a thread at 8 warps, act_quant's fastest two-pass step on the H200


@triton.jit
def _silu_mul(g_row, offs, D, OUT_DTYPE: tl.constexpr):
    """x for columns ``offs`` of one row, rounded to the output dtype, returned in fp32."""
    mask = offs < D
    g = tl.load(g_row + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(g_row + D + offs, mask=mask, other=0.0).to(tl.float32)
    return (g / (1.0 + tl.exp(-g)) * u).to(OUT_DTYPE).to(tl.float32)


@triton.jit(do_not_specialize=["M"])
def silu_mul_codes_kernel(g_ptr, x_ptr, q_ptr, s_ptr, mode_ptr, M, D, stride_gm, CHUNK: tl.constexpr,
                          INTERPRET: tl.constexpr):
    """A program per token row: x in FP16 mode (mode 0), codes and scale in FP8 mode (mode 1)."""
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * stride_gm
    offs = tl.arange(0, CHUNK)
    out_dtype = x_ptr.dtype.element_ty
    if tl.load(mode_ptr) == 1:
        amax = tl.zeros((CHUNK,), dtype=tl.float32)
        for d0 in tl.range(0, D, CHUNK, num_stages=1):
            amax = tl.maximum(amax, tl.abs(_silu_mul(g_row, d0 + offs, D, out_dtype)))
        scale = act_scale(tl.max(amax, axis=0), INTERPRET)
        rcp = tl.math.div_rn(tl.full((), 1.0, tl.float32), scale)
        for d0 in tl.range(0, D, CHUNK, num_stages=1):
            q = div_by_scale(_silu_mul(g_row, d0 + offs, D, out_dtype), scale, rcp, INTERPRET)
            tl.store(q_ptr + row * D + d0 + offs, to_e4m3(tl.clamp(q, -FP8_MAX, FP8_MAX), INTERPRET),
                     mask=d0 + offs < D)
        tl.store(s_ptr + row, scale)
    else:
        for d0 in tl.range(0, D, CHUNK, num_stages=1):
            x = _silu_mul(g_row, d0 + offs, D, out_dtype)
            tl.store(x_ptr + row * D + d0 + offs, x.to(out_dtype), mask=d0 + offs < D)


def silu_mul_codes(gate_up: torch.Tensor, mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, codes, scales)`` for ``x = silu(gate_up[..., :d]) * gate_up[..., d:]``: x is written in FP16 mode
    (``mode[0] == 0``), the codes [..., d] E4M3 and scales [..., 1] fp32 in FP8 mode; the others are left
    unwritten. ``gate_up`` needs unit stride along its last dimension."""
    g2 = gate_up.reshape(-1, gate_up.shape[-1])
    if g2.stride(-1) != 1 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must have an even last dimension of unit stride, got {tuple(gate_up.shape)} "
                         f"with strides {tuple(gate_up.stride())}")
    x, q, s = silu_mul_codes_outputs(gate_up)
    m, d = g2.shape[0], gate_up.shape[-1] // 2
    if m:
        sg = g2.stride(0)
        launch(silu_mul_codes_kernel, m, (g2, x, q, s, mode, m, d, sg), dict(CHUNK=CHUNK, INTERPRET=not g2.is_cuda),
               8, 1, (g2.dtype, g2.data_ptr() & 15, d & 15, sg & 15, d == 1))  # Triton specializes ints equal to 1
    return x, q, s


if __name__ == "__main__":  # check against the reference, then time both modes against torch's silu-mul
    from triton.testing import do_bench

    from kernels.mode_state import MODE_CODES

    for m, d in ((256, 14336), (2048, 14336), (8192, 14336)):
        g = torch.randn(m, 2 * d, device="cuda").half()
        mode = torch.zeros(1, dtype=torch.int32, device="cuda")
        rx, rq, rs = silu_mul_codes_reference(g)
        row = {}
        for name in ("fp16", "fp8"):
            mode.fill_(MODE_CODES[name])
            x, q, s = silu_mul_codes(g, mode)
            if name == "fp16":
                ulps = ulps_apart(x, rx)
                assert ulps <= 1, f"x off by {ulps} ulps"
                rq, rs = quantize_per_token(x)
            else:
                assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
            row[name] = do_bench(lambda: silu_mul_codes(g, mode), return_mode="median")
        plain = do_bench(lambda: F.silu(g[:, :d]) * g[:, d:], return_mode="median")
        print(f"M={m:5d} D={d}: fp16 mode {row['fp16'] * 1e3:7.1f} us, fp8 mode {row['fp8'] * 1e3:7.1f} us, "
              f"torch silu*mul {plain * 1e3:7.1f} us", flush=True)
