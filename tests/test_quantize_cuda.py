"""Per-token E4M3 quantization on a CUDA GPU: the fast division and every path of ``act_quant``.

The CPU tests run the kernels under Triton's interpreter, where ``div_by_scale`` just divides; only
the GPU runs its Markstein steps. So here they are checked against ``div_rn`` on every input they
can meet: each finite fp16 or bf16 amax (hence each scale ``act_scale`` makes) with each finite x of
that dtype within it.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels import triton_fp8
from kernels.ops import new_mode_tensor
from kernels.reference import quantize_per_token
from kernels.triton_fp8 import FP8_MAX, act_scale, div_by_scale, to_e4m3
from tests.kernel_helpers import fp_pairs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@triton.jit
def _mismatch_kernel(amax_bits_ptr, x_bits_ptr, NX, bad_ptr, BF16: tl.constexpr, BLOCK: tl.constexpr):
    """Counts the x (of this program's block) whose code from ``div_by_scale`` differs from div_rn's, for
    the amax of this program's row."""
    amax, x, in_range = fp_pairs(amax_bits_ptr, x_bits_ptr, NX, BF16, BLOCK)
    s = act_scale(amax, False) + tl.zeros_like(x)
    r = tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), s)
    want = to_e4m3(tl.clamp(tl.math.div_rn(x, s), -FP8_MAX, FP8_MAX), False).to(tl.uint8, bitcast=True)
    got = to_e4m3(tl.clamp(div_by_scale(x, s, r, False), -FP8_MAX, FP8_MAX), False).to(tl.uint8, bitcast=True)
    bad = (want != got) & in_range
    tl.atomic_add(bad_ptr, tl.sum(bad.to(tl.int32), axis=0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_division_gives_div_rn_codes_for_every_amax_and_x(dtype):
    bits = torch.arange(-32768, 32768, dtype=torch.int32, device="cuda").to(torch.int16)
    vals = bits.view(dtype).float()
    finite = torch.isfinite(vals)
    xs, amaxes = bits[finite].contiguous(), bits[finite & (vals > 0)].contiguous()
    assert -0.0 in vals[finite].tolist() and xs.numel() > 60000 and amaxes.numel() > 30000
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    block = 1024
    _mismatch_kernel[(amaxes.numel(), triton.cdiv(xs.numel(), block))](amaxes, xs, xs.numel(), bad,
                                                                       BF16=dtype == torch.bfloat16, BLOCK=block)
    assert int(bad) == 0


# (m, k): short rows read once; long rows read once at small M (fast division); long rows at large M and
# rows past ONE_PASS_LONG_MAX_K read twice, in 2048- and 4096-wide steps.
PATHS = [(1024, 4096), (33, 8192), (64, 14336), (7, 28672), (300, 8200), (300, 14336), (257, 28672), (3, 40000)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k"), PATHS)
def test_act_quant_equals_quantize_per_token_on_each_path(m, k, dtype):
    x = torch.randn(m, k, device="cuda") * torch.logspace(-6, 2, m, device="cuda")[:, None]
    x[:, ::97] *= 40  # outliers: most codes land in the small end of E4M3 (and |x| stays finite in fp16)
    x[0] = 0.0
    x[1, :5] = -0.0
    x = x.to(dtype)
    q = torch.full((m, k), float("nan"), device="cuda").to(torch.float8_e4m3fn)
    s = torch.full((m,), float("nan"), device="cuda")
    triton_fp8.act_quant(x, new_mode_tensor("cuda", "fp8"), (q, s))
    rq, rs = quantize_per_token(x)
    assert torch.equal(s, rs.flatten())
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
