"""FP8-mode accuracy of NestedFP against vLLM-style per-channel FP8 weight quantization.

``python -m kernels.accuracy`` prints relative errors against the exact FP16 GEMM on realistic
weights (Gaussian std 0.02 plus heavy-tailed outliers). Both use the same per-token dynamic
activation quantization, so the difference is the weight format alone.
"""

from __future__ import annotations

import json

import torch

from kernels.nested_format import nested_merge, nested_split
from kernels.reference import FP8_MAX, fp8_linear_reference, quantize_per_token


def realistic_weight(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian std 0.02 with a Student-t (df=2) tail on 0.1% of entries, clipped into range."""
    w = torch.randn(n, k, generator=generator) * 0.02
    mask = torch.rand(n, k, generator=generator) < 1e-3
    tail = torch.distributions.StudentT(2.0).sample((n, k)) * 0.05
    w = torch.where(mask, tail, w).clamp(-1.8, 1.8)
    return w.half()


def per_channel_fp8_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """vLLM's FP8 path: per-output-channel weight scale (absmax/448), per-token activations."""
    w_scale = (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    w_fp8 = (w.float() / w_scale).to(torch.float8_e4m3fn)
    x_fp8, x_scale = quantize_per_token(x)
    acc = x_fp8.float() @ w_fp8.float().t()
    return (acc * x_scale * w_scale.t()).to(x.dtype)


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def compare(n: int = 1024, k: int = 1024, m: int = 64, seed: int = 0) -> dict[str, float]:
    """Relative error of each FP8 scheme against the exact GEMM (float64 reference)."""
    g = torch.Generator().manual_seed(seed)
    w = realistic_weight(n, k, g)
    x = (torch.randn(m, k, generator=g)).half()
    nw = nested_split(w)
    assert torch.equal(nested_merge(nw).view(torch.int16), w.view(torch.int16))
    ref = (x.double() @ w.double().t()).float()
    return {
        "shape_mnk": [m, n, k],
        "seed": seed,
        "fp16_gemm": _rel(torch.nn.functional.linear(x, w), ref),
        "nestedfp8": _rel(fp8_linear_reference(x, nw.upper, nw.fp8_weight_scale), ref),
        "per_channel_fp8": _rel(per_channel_fp8_linear(x, w), ref),
    }


if __name__ == "__main__":
    print(json.dumps([compare(seed=s) for s in range(3)], indent=1))
