"""One memory pass that rebuilds the exact FP16 weight ``[N, K]`` from its two NestedFP planes.

Used by the dispatcher's large-M FP16 path (merge into a temporary, then cuBLAS): at prefill sizes
the GEMM is compute-bound, and a 4-bytes-per-weight pass (2 read, 2 written) costs less than the
fused kernel's in-loop merge stalls (docs/BENCHMARKS.md). The merge is ``triton_fp16.merge_planes``
(PTX on the GPU, ``tl`` integer ops under the interpreter), i.e. ``nested_format._merge_chunk``'s
carry fix; the pre-scale ``2**scale_exp`` is a power of two, so multiplying by it is exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fast_launch import cdiv, launch
from kernels.triton_fp16 import merge_planes

MERGE_BLOCK = 4096  # weights per program: 32 per thread at 4 warps, 16-byte loads of each plane
MERGE_WARPS = 4


@triton.jit
def merge_kernel(u_ptr, l_ptr, w_ptr, numel, scale, HAS_SCALE: tl.constexpr, USE_ASM: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    u = tl.load(u_ptr.to(tl.pointer_type(tl.uint8)) + offs, mask=ok, other=0)
    lo = tl.load(l_ptr + offs, mask=ok, other=0)
    w = merge_planes(u, lo, USE_ASM)
    if HAS_SCALE:
        w = (w.to(tl.float32) * scale).to(tl.float16)  # 2**scale_exp, exact: the split checked it
    if w_ptr.dtype.element_ty == tl.bfloat16:
        # Round to nearest-even as torch's cast does, in integer ops: the interpreter's float cast
        # truncates. Exact for finite values, and merged weights are always finite.
        b = w.to(tl.float32).to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        w = b.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(w_ptr + offs, w, mask=ok)


def merge_weight(
    upper: torch.Tensor,
    lower: torch.Tensor,
    scale_exp: int = 0,
    dtype: torch.dtype = torch.float16,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The FP16 weight ``merge(upper, lower) * 2**scale_exp`` as ``dtype`` (fp16 or bf16), one pass.

    Bit-exact with ``nested_format.nested_merge`` (then ``.to(dtype)``: the cast to bf16 rounds
    to nearest-even in the kernel, as torch's does). Planes must be contiguous and of one shape.
    """
    if upper.shape != lower.shape or not (upper.is_contiguous() and lower.is_contiguous()):
        raise ValueError(f"planes must be contiguous and of one shape: {tuple(upper.shape)}, {tuple(lower.shape)}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"merge_weight writes float16 or bfloat16, got {dtype}")
    if out is None:
        out = torch.empty(upper.shape, dtype=dtype, device=upper.device)
    numel = upper.numel()
    if numel:
        spec = (out.dtype, upper.data_ptr() & 15, lower.data_ptr() & 15, out.data_ptr() & 15, numel & 15, numel == 1)
        launch(merge_kernel, cdiv(numel, MERGE_BLOCK), (upper, lower, out, numel, 2.0**scale_exp),
               dict(HAS_SCALE=scale_exp != 0, USE_ASM=upper.is_cuda, BLOCK=MERGE_BLOCK), MERGE_WARPS, 1, spec)
    return out
