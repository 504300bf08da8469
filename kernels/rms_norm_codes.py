"""RMSNorm (and vLLM's residual add before it) that writes what the next NestedFP layer reads in the current mode.

Why: the RMSNorms before qkv_proj and gate_up_proj write the x those layers read. torch.compile fuses the
layers' per-token quantization into them (``kernels.vllm_plugin.nestedfp_method``), and its kernels cannot
know the mode, so FP16 mode writes codes it never reads: 17.2 and 12.2 us a launch against 11.7 and 8.0 us
without them, the larger part of what FP16 mode still lost to vLLM FP16 on prefill after SiLU-and-mul was
made mode-aware (docs/BENCHMARKS.md, "Engine v13"). This kernel reads the mode tensor: FP16 mode writes y,
FP8 mode y's codes and scales instead. The new residual is written in both modes: the next layer adds to it.

The arithmetic is vLLM's ``rms_norm`` / ``fused_add_rms_norm`` (``vllm.ir.ops``): the sum in fp32, the
normalized row rounded to the weight's dtype, times the weight, in the activation dtype. The row is held in
registers (one read, one program per token). The codes and scales are ``kernels.reference.quantize_per_token``
of the y this kernel computes, bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fast_launch import launch
from kernels.reference import rms_norm_codes_outputs, rms_norm_codes_reference
from kernels.triton_fp8 import FP8_MAX, act_scale, div_by_scale, to_e4m3

MAX_WIDTH = 32768  # rows held in registers: 16 warps x 64 values a thread at most
# How far y may be from the reference's: rsqrt's last bit differs between devices and libraries, and y rounds
# twice (the normalized row, then its product with the weight), so one ulp before a weight above 1 is two after.
Y_ULPS = 2


@triton.jit
def rms_norm_codes_kernel(x_ptr, r_ptr, w_ptr, y_ptr, ro_ptr, q_ptr, s_ptr, mode_ptr, N, eps, stride_x, stride_r,
                          HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    """A program per token row: the new residual (if any) in both modes; y in FP16 mode (mode 0), y's codes and
    scale in FP8 mode (mode 1)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    out_dtype = y_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(r_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(ro_ptr + row * N + offs, x.to(out_dtype), mask=mask)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = ((x * rstd).to(w.dtype).to(tl.float32) * w.to(tl.float32)).to(out_dtype)
    if tl.load(mode_ptr) == 1:
        yf = y.to(tl.float32)
        scale = act_scale(tl.max(tl.abs(yf), axis=0), INTERPRET)
        rcp = tl.math.div_rn(tl.full((), 1.0, tl.float32), scale)
        q = div_by_scale(yf, scale, rcp, INTERPRET)
        tl.store(q_ptr + row * N + offs, to_e4m3(tl.clamp(q, -FP8_MAX, FP8_MAX), INTERPRET), mask=mask)
        tl.store(s_ptr + row, scale)
    else:
        tl.store(y_ptr + row * N + offs, y, mask=mask)


def launch_config(n: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for rows of ``n`` values: 16 values a thread up to 8 warps (4096-wide rows, the
    Llama-3.1-8B hidden size), then 16 warps."""
    block = triton.next_power_of_2(n)
    return block, min(max(block // 512, 4), 16)


def rms_norm_codes(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, codes, scales)`` of vLLM's ``rms_norm(x, weight, eps)``: y is written in FP16 mode (``mode[0] ==
    0``), the codes [..., n] E4M3 and scales [..., 1] fp32 in FP8 mode; the others are left unwritten. Rows need
    unit stride and at most ``MAX_WIDTH`` values."""
    return _norm(x, None, weight, eps, mode)


def add_rms_norm_codes(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, new residual, codes, scales)`` of vLLM's ``fused_add_rms_norm(x, residual, weight, eps)``; the new
    residual is written in both modes, the rest as in ``rms_norm_codes``."""
    return _norm(x, residual, weight, eps, mode)


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
          mode: torch.Tensor) -> tuple[torch.Tensor, ...]:
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    r2 = None if residual is None else residual.reshape(-1, n)
    if (n > MAX_WIDTH or x2.stride(-1) != 1 or weight.shape != (n,) or not weight.is_contiguous()
            or (r2 is not None and (r2.shape != x2.shape or r2.stride(-1) != 1))):
        raise ValueError(f"rms_norm_codes needs rows of at most {MAX_WIDTH} unit-stride values and a weight of "
                         f"their width: x {tuple(x.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)}, weight {tuple(weight.shape)}")
    outs = rms_norm_codes_outputs(x, residual is not None)
    y, q, s = outs[0], outs[-2], outs[-1]
    ro = outs[1] if residual is not None else y
    m = x2.shape[0]
    if m:
        block, warps = launch_config(n)
        r2 = x2 if r2 is None else r2
        sx, sr = x2.stride(0), r2.stride(0)
        launch(rms_norm_codes_kernel, m, (x2, r2, weight, y, ro, q, s, mode, n, eps, sx, sr),
               dict(HAS_RESIDUAL=residual is not None, BLOCK=block, INTERPRET=not x2.is_cuda), warps, 1,
               (x2.dtype, weight.dtype, x2.data_ptr() & 15, r2.data_ptr() & 15, weight.data_ptr() & 15,
                n & 15, sx & 15, sr & 15, n == 1, sx == 1, sr == 1))  # Triton specializes ints equal to 1
    return outs


if __name__ == "__main__":  # check against the reference, then time both modes against Inductor's plain RMSNorm
    from triton.testing import do_bench

    from kernels.mode_state import MODE_CODES
    from kernels.reference import quantize_per_token, ulps_apart

    def plain(x, r, w, eps):  # vLLM's fused_add_rms_norm as Inductor compiles it without the codes
        xf = x.float() + r.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).half() * w
        return y, xf.half()

    compiled_plain = torch.compile(plain)
    for m, n in ((256, 4096), (2048, 4096), (8192, 4096), (8192, 8192)):
        x, r = torch.randn(m, n, device="cuda").half(), torch.randn(m, n, device="cuda").half()
        w = (torch.rand(n, device="cuda") + 0.5).half()
        mode = torch.zeros(1, dtype=torch.int32, device="cuda")
        ry, rr = rms_norm_codes_reference(x, r, w, 1e-5)[:2]
        row = {}
        for name in ("fp16", "fp8"):
            mode.fill_(MODE_CODES[name])
            y, ro, q, s = add_rms_norm_codes(x, r, w, 1e-5, mode)
            assert torch.equal(ro, rr)
            if name == "fp16":
                ulps = ulps_apart(y, ry)
                assert ulps <= Y_ULPS, f"y off by {ulps} ulps"
                ref_q, ref_s = quantize_per_token(y)
            else:
                assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s)
            row[name] = do_bench(lambda: add_rms_norm_codes(x, r, w, 1e-5, mode), return_mode="median")
        base = do_bench(lambda: compiled_plain(x, r, w, 1e-5), return_mode="median")
        print(f"M={m:5d} N={n}: fp16 mode {row['fp16'] * 1e3:7.1f} us, fp8 mode {row['fp8'] * 1e3:7.1f} us, "
              f"Inductor add + RMSNorm {base * 1e3:7.1f} us", flush=True)
