"""``nestedfp::linear_prequantized`` on a Hopper GPU: x's codes from the caller, no quantization launch.

Against ``nestedfp::linear`` (which quantizes x itself, exactly as ``quantize_per_token`` does): bit-equal
outputs on every path the dispatcher takes (the dual kernel where the H200 tables pair, FP16 + FP8 launches
where they do not, the Triton kernels off the tables, cuBLASLt at eager large M), eagerly and in a CUDA graph
that follows mode flips. Under ``torch.compile``: the quantization fuses into the RMSNorm kernel before it,
which is why the vLLM method calls this op (``kernels.vllm_plugin.nestedfp_method``).
"""

from __future__ import annotations

import pytest
import torch

from kernels import nested_linear, quantize_per_token, triton_dispatch
from kernels.ops import new_mode_tensor, set_host_mode
from kernels.reference import nested_linear_prequantized, ulps_apart
from tests.kernel_helpers import (
    hopper_gluon_problem,
    nested_weights,
    poisoned_codes_outputs,
    rel_err,
    replays_follow_mode_flips,
)

pytestmark = pytest.mark.skipif(hopper_gluon_problem() is not None, reason=str(hopper_gluon_problem()))
TOL = {"fp16": 5e-3, "fp8": 5e-3}
# (M, N, K): 8B.qkv where the tables pair (M = 1, 64) and not (256); 8B.o at M = 1 (split mismatch: three
# launches); off the tables (Triton kernels); from LARGE_M_THRESHOLD (cuBLASLt / merge + cuBLAS eagerly).
CASES = [(1, 6144, 4096), (64, 6144, 4096), (256, 6144, 4096), (1, 4096, 4096), (7, 200, 528), (1025, 4096, 4096)]


def _prequantized(x, nw, mode, bias=None):
    q, s = quantize_per_token(x)
    return torch.ops.nestedfp.linear_prequantized(x, q, s, nw.upper, nw.lower, mode, nw.scale_exp, bias)


@pytest.mark.parametrize("host_pick", [True, False])
@pytest.mark.parametrize("m,n,k", CASES)
def test_given_codes_give_the_bits_of_the_op_that_quantizes(monkeypatch, m, n, k, host_pick):
    monkeypatch.setattr(triton_dispatch, "HOST_PICK", host_pick)
    nw = nested_weights(n, k, amax=3.0)  # pre-scaled
    x = torch.randn(m, k, device="cuda").half()
    b = torch.randn(n, device="cuda").half()
    mode = new_mode_tensor("cuda")
    for name in ("fp16", "fp8", "fp16"):
        set_host_mode(mode, name)
        want = torch.ops.nestedfp.linear(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
        got = _prequantized(x, nw, mode, b)
        assert torch.equal(got, want), name
        assert rel_err(got, nested_linear(x, nw, name, b)) < TOL[name], name


@pytest.mark.parametrize("m", [1, 16, 64, 100])
def test_one_graph_with_the_quantization_in_it_follows_mode_flips(m):
    """Captured once (device pick), torch's quantization and the op together: each replay equals the eager
    op of the mode it runs in, with x changing between replays."""
    n, k = 6144, 4096
    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp16")

    def check(out, name, step):
        assert torch.equal(out, torch.ops.nestedfp.linear(x, nw.upper, nw.lower, mode, 0)), (step, name)

    replays_follow_mode_flips(lambda: _prequantized(x, nw, mode), x, mode, check)


def test_compile_fuses_the_quantization_into_the_rms_norm_kernel():
    """What the vLLM method relies on: Inductor writes x, its codes and its scales in one kernel (RMSNorm +
    per-token quantization), then calls the op. Inductor quantizes the normalized x before rounding it to fp16
    (it keeps fused intermediates in fp32), so a few codes sit one E4M3 step from ``quantize_per_token`` of the
    fp16 x it returns: counted and printed, and bounded."""
    from torch._inductor.utils import run_and_get_code

    n, k, m = 4096, 4096, 64
    nw = nested_weights(n, k)
    gamma = torch.rand(k, device="cuda").half() + 0.5
    mode = new_mode_tensor("cuda", "fp8")

    def norm_then_linear(x):
        h = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).half() * gamma
        q, s = quantize_per_token(h)
        return torch.ops.nestedfp.linear_prequantized(h, q, s, nw.upper, nw.lower, mode, 0), h, q, s

    x = torch.randn(m, k, device="cuda").half()
    compiled = torch.compile(norm_then_linear, fullgraph=True)
    (y, h, q, s), codes = run_and_get_code(compiled, x)
    kernels = sum(c.count("@triton.jit") for c in codes)
    print(f"Inductor kernels: {kernels}")
    assert kernels == 1, "the RMSNorm and the quantization should be one kernel"
    rq, rs = quantize_per_token(h)
    qf, rqf = q.float(), rq.float()
    differ = (qf != rqf).sum().item()
    print(f"codes that differ from quantize_per_token(h): {differ} of {q.numel()}; "
          f"max scale rel diff {((s - rs).abs() / rs).max().item():.1e}")
    assert differ < q.numel() // 100
    assert ((s - rs).abs() <= rs * 2.0**-10).all()  # amax differs by at most fp16 rounding
    step = torch.where(rqf.abs() >= 2.0**-6, 2.0 ** (torch.floor(torch.log2(rqf.abs().clamp_min(2.0**-6))) - 3), 2.0**-9)
    assert ((qf - rqf).abs() <= step * 1.01 + (qf.abs() * 2.0**-10)).all(), "a code more than one step away"
    # The op, against the reference on the codes it was given; then the whole, whose codes drift by the step
    # counted above (that drift alone took one cold-cache run on the H200 to 0.0051 against 0.005).
    assert rel_err(y, nested_linear_prequantized(h, q, s, nw, "fp8")) < TOL["fp8"]
    assert rel_err(y, nested_linear(h, nw, "fp8")) < 2 * TOL["fp8"]
    try:
        set_host_mode(mode, "fp16")
        y16, h16, _, _ = compiled(x)
        assert rel_err(y16, nested_linear(h16, nw, "fp16")) < TOL["fp16"]
    finally:
        set_host_mode(mode, "fp16")


@pytest.mark.parametrize("m, d", [(1, 14336), (256, 14336), (2049, 14336), (33, 3000)])
def test_mode_aware_silu_mul_writes_x_or_the_codes_of_that_x(m, d):
    """``kernels.silu_mul_codes`` on the GPU (fast division, hardware E4M3): x within an ulp of the reference
    (the GPU's exp), codes and scales bit for bit ``quantize_per_token`` of that x; each mode leaves the other
    mode's outputs as it found them."""
    from kernels import silu_mul_codes as smc
    from kernels.reference import silu_mul_codes_reference

    g = (torch.randn(m, 2 * d, device="cuda") * 4).half()
    mode = new_mode_tensor("cuda")
    got = {}
    for name in ("fp16", "fp8"):
        set_host_mode(mode, name)
        x, q, s = poisoned_codes_outputs(m, d, "cuda")
        smc.silu_mul_codes_kernel[(m,)](g, x, q.view(torch.float8_e4m3fn), s, mode, m, d, g.stride(0),
                                        CHUNK=smc.CHUNK, INTERPRET=False, num_warps=8, num_stages=1)
        got[name] = x, q, s
    set_host_mode(mode, "fp16")
    x, q16, s16 = got["fp16"]
    x8, q, s = got["fp8"]
    assert ulps_apart(x, silu_mul_codes_reference(g)[0]) <= 1
    rq, rs = quantize_per_token(x)
    assert torch.equal(q, rq.view(torch.uint8)) and torch.equal(s, rs)
    assert (q16 == 0x7F).all() and s16.isnan().all() and x8.isnan().all()
    fx, fq, fs = smc.silu_mul_codes(g, mode)  # the wrapper's fast launch path, FP16 mode
    assert torch.equal(fx, x)


def test_compiled_mlp_tail_with_the_codes_pass_follows_mode_flips_in_a_cuda_graph():
    """What vLLM compiles before down_proj, with the plugin's pass: one ``nestedfp::silu_mul_codes`` launch
    replaces Inductor's fused SiLU-and-mul + quantization; captured once, each replay gives the reference of
    the mode it runs in."""
    pytest.importorskip("vllm")
    from torch._inductor.utils import run_and_get_code
    from vllm.model_executor.layers.activation import SiluAndMul

    from kernels.reference import silu_mul_codes_reference
    from kernels.vllm_plugin.codes_pass import CodesPass

    n, d, m = 4096, 14336, 64
    nw = nested_weights(n, d)
    mode = new_mode_tensor("cuda")

    def tail(gate_up):
        x = SiluAndMul.forward_native(gate_up)
        q, s = quantize_per_token(x)
        return torch.ops.nestedfp.linear_prequantized(x, q, s, nw.upper, nw.lower, mode, nw.scale_exp)

    g = torch.randn(m, 2 * d, device="cuda").half()
    torch._dynamo.reset()
    with torch._inductor.config.patch(post_grad_custom_post_pass=CodesPass(), fx_graph_cache=False):
        compiled = torch.compile(tail, fullgraph=True)
        _, codes = run_and_get_code(compiled, g)
    assert "silu_mul_codes" in "".join(codes)

    def check(out, name, step):
        want = nested_linear_prequantized(*silu_mul_codes_reference(g), nw, name)
        assert rel_err(out, want) < TOL[name], (step, name)

    replays_follow_mode_flips(lambda: compiled(g), g, mode, check)


@pytest.mark.parametrize("m, n, residual", [(1, 4096, True), (256, 4096, True), (2049, 4096, False),
                                            (33, 8192, True), (5, 3000, True)])
def test_mode_aware_rms_norm_writes_y_or_the_codes_of_that_y_and_the_residual_in_both(m, n, residual):
    """``kernels.rms_norm_codes`` on the GPU (fast division, hardware E4M3, the GPU's rsqrt): y within
    ``Y_ULPS`` of the reference, the new residual bit for bit, codes and scales bit for bit ``quantize_per_token`` of that y;
    each mode leaves the other mode's outputs as it found them."""
    from kernels import rms_norm_codes as rnc
    from kernels.reference import rms_norm_codes_reference

    x = (torch.randn(m, n, device="cuda") * 3).half()
    r = torch.randn(m, n, device="cuda").half() if residual else None
    w = (torch.rand(n, device="cuda") + 0.5).half()
    mode = new_mode_tensor("cuda")
    block, warps = rnc.launch_config(n)
    got = {}
    for name in ("fp16", "fp8"):
        set_host_mode(mode, name)
        y, q, s = poisoned_codes_outputs(m, n, "cuda")
        ro = torch.full_like(y, float("nan"))
        rr = x if r is None else r
        rnc.rms_norm_codes_kernel[(m,)](x, rr, w, y, ro, q.view(torch.float8_e4m3fn), s, mode, n, 1e-5, x.stride(0),
                                        rr.stride(0), HAS_RESIDUAL=residual, BLOCK=block, INTERPRET=False,
                                        num_warps=warps, num_stages=1)
        got[name] = y, ro, q, s
    set_host_mode(mode, "fp16")
    ref = rms_norm_codes_reference(x, r, w, 1e-5)
    (y, ro16, q16, s16), (y8, ro8, q, s) = got["fp16"], got["fp8"]
    assert ulps_apart(y, ref[0]) <= rnc.Y_ULPS
    rq, rs = quantize_per_token(y)
    assert torch.equal(q, rq.view(torch.uint8)) and torch.equal(s, rs)
    if residual:
        assert torch.equal(ro16, ref[1]) and torch.equal(ro8, ref[1])
    assert (q16 == 0x7F).all() and s16.isnan().all() and y8.isnan().all()
    fast = rnc.add_rms_norm_codes(x, r, w, 1e-5, mode) if residual else rnc.rms_norm_codes(x, w, 1e-5, mode)
    assert torch.equal(fast[0], y)  # the wrapper's fast launch path, FP16 mode


def test_compiled_decoder_norms_with_the_codes_pass_follow_mode_flips_in_a_cuda_graph():
    """What vLLM 0.25 compiles before qkv_proj and gate_up_proj: its IR RMSNorm ops as single nodes, which the
    plugin's pass swaps for ``nestedfp::rms_norm_codes`` / ``add_rms_norm_codes``; captured once, each replay
    gives the reference of the mode it runs in."""
    pytest.importorskip("vllm")
    from torch._inductor.utils import run_and_get_code
    from vllm import ir

    from kernels.reference import rms_norm_codes_reference
    from kernels.vllm_plugin.codes_pass import CodesPass

    n, k, m, eps = 6144, 4096, 64, 1e-5
    nw = nested_weights(n, k)
    w = (torch.rand(k, device="cuda") + 0.5).half()
    mode = new_mode_tensor("cuda")
    h, attn = torch.randn(m, k, device="cuda").half(), torch.randn(m, k, device="cuda").half()

    def norms(h, attn):
        y0 = ir.ops.rms_norm(h, w, eps, None)
        y, residual = ir.ops.fused_add_rms_norm(attn, h, w, eps, None)
        return _prequantized(y0, nw, mode) + _prequantized(y, nw, mode) + residual[:, :1]

    torch._dynamo.reset()
    with ir.enable_torch_wrap(True), torch._inductor.config.patch(post_grad_custom_post_pass=CodesPass(),
                                                                  fx_graph_cache=False):
        compiled = torch.compile(norms, fullgraph=True)
        _, codes = run_and_get_code(compiled, h, attn)
    code = "".join(codes)
    assert "nestedfp.rms_norm_codes" in code and "nestedfp.add_rms_norm_codes" in code

    def check(out, name, step):
        y0, q0, s0 = rms_norm_codes_reference(h, None, w, eps)
        y, residual, q, s = rms_norm_codes_reference(attn, h, w, eps)
        want = (nested_linear_prequantized(y0, q0, s0, nw, name) + nested_linear_prequantized(y, q, s, nw, name)
                + residual[:, :1])
        assert rel_err(out, want) < TOL[name], (step, name)

    with ir.enable_torch_wrap(True):
        replays_follow_mode_flips(lambda: compiled(h, attn), h, mode, check)
