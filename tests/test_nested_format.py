"""The NestedFP format: exact round trips, the E4M3 upper byte, pre-scaling, and the reference GEMMs."""

import pytest
import torch
import torch.nn.functional as F

from kernels import NestedRangeError, nested_linear, nested_merge, nested_split, quantize_per_token
from kernels.accuracy import compare
from kernels.nested_format import is_in_range
from kernels.reference import nested_linear_prequantized

ALL_BITS = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
IN_RANGE = (ALL_BITS.to(torch.int32) & 0x7FFF) < 0x3F80  # |w| < 1.875


def test_merge_restores_every_in_range_fp16_bit_pattern():
    w = ALL_BITS[IN_RANGE].view(torch.float16).reshape(2, -1)
    back = nested_merge(nested_split(w))
    assert torch.equal(back.view(torch.int16), w.view(torch.int16))


def test_upper_byte_is_w_times_256_rounded_to_nearest_even_e4m3():
    w = ALL_BITS[IN_RANGE].view(torch.float16).reshape(1, -1)
    upper = nested_split(w).upper
    expected = (w.float() * 256).to(torch.float8_e4m3fn)  # torch rounds to nearest even
    # Except [1.75, 1.875): a round-up would hit the NaN code, so upper saturates at 448 there. (Torch's own
    # cast there differs between versions: 2.11, on the H200 box, casts 472 and up to the NaN code; 2.13 saturates.)
    near_top = (w.abs() >= 1.75) & (w.abs() < 1.875)
    assert near_top.any()
    assert torch.equal(upper.view(torch.uint8)[~near_top], expected.view(torch.uint8)[~near_top])
    assert not torch.isnan(upper.float()).any()
    assert torch.equal(upper.float()[near_top], 448 * w.float().sign()[near_top])


def test_lower_plane_is_the_fp16_low_byte():
    w = (torch.randn(33, 70) * 0.05).half()
    lower = nested_split(w).lower
    assert torch.equal(lower, (w.view(torch.int16).to(torch.int32) & 0xFF).to(torch.uint8))


@pytest.mark.parametrize("std", [1e-4, 0.02, 0.3])
def test_random_tensors_round_trip_bit_exact(std):
    w = (torch.randn(257, 131) * std).clamp(-1.87, 1.87).half()
    nw = nested_split(w)
    assert nw.upper.dtype == torch.float8_e4m3fn and nw.lower.dtype == torch.uint8
    assert nw.upper.element_size() + nw.lower.element_size() == w.element_size()
    assert torch.equal(nested_merge(nw).view(torch.int16), w.view(torch.int16))


def test_out_of_range_weights_get_an_exact_power_of_two_prescale():
    w = (torch.randn(64, 64) * 0.02).half()
    w = w.sign() * w.abs().clamp_min(2.0**-10)  # no values that a pre-scale pushes into subnormals
    w[0, 0], w[5, 7] = 7.0, -3.5
    assert not is_in_range(w)
    nw = nested_split(w)
    assert nw.scale_exp == 2  # 7 * 2**-2 = 1.75 < 1.875 > 7 * 2**-1
    assert torch.equal(nested_merge(nw).view(torch.int16), w.view(torch.int16))


def test_prescale_that_would_lose_subnormal_bits_is_refused():
    w = torch.tensor([[7.0, 3.0e-5, 0.01, -1.0e-4]], dtype=torch.float16)
    with pytest.raises(NestedRangeError):
        nested_split(w)


def test_inf_and_nan_are_refused():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(NestedRangeError):
            nested_split(torch.tensor([[0.5, bad]], dtype=torch.float16))


def test_fp16_mode_equals_linear_with_merged_weight_bit_for_bit():
    w = (torch.randn(96, 80) * 0.02).half()
    w[3, 3] = 5.0
    w = w.sign() * w.abs().clamp_min(2.0**-10)
    nw = nested_split(w)
    x = torch.randn(7, 80).half()
    b = torch.randn(96).half()
    assert torch.equal(nested_linear(x, nw, "fp16", b), F.linear(x, w, b))


def test_fp8_mode_matches_a_float64_oracle_of_its_own_definition():
    w = (torch.randn(48, 64) * 0.02).half()
    nw = nested_split(w)
    x = torch.randn(5, 64).half()
    amax = x.double().abs().amax(dim=1, keepdim=True)
    xs = amax / 448
    xq = (x.double() / xs).float().to(torch.float8_e4m3fn).double()
    ref = (xq @ (nw.upper.double() / 256).t()) * xs
    got = nested_linear(x, nw, "fp8").double()
    assert torch.allclose(got, ref, rtol=2e-3, atol=1e-3)
    assert nested_linear(x, nw, "fp8").dtype == torch.float16


@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_prequantized_op_equals_the_op_that_quantizes_x_itself_bit_for_bit(mode):
    """``nestedfp::linear_prequantized`` on ``quantize_per_token(x)``'s codes is ``nestedfp::linear``: the
    vLLM method may hand either op a layer, and the outputs do not depend on which."""
    import kernels.ops  # noqa: F401  (defines the ops)
    from kernels.ops import new_mode_tensor

    nw = nested_split((torch.randn(40, 64) * 0.05).half())
    x = torch.randn(3, 5, 64).half()
    b = torch.randn(40).half()
    q, s = quantize_per_token(x)
    m = new_mode_tensor("cpu", mode)
    got = torch.ops.nestedfp.linear_prequantized(x, q, s, nw.upper, nw.lower, m, nw.scale_exp, b)
    assert torch.equal(got, torch.ops.nestedfp.linear(x, nw.upper, nw.lower, m, nw.scale_exp, b))
    assert got.shape == (3, 5, 40)


@pytest.mark.parametrize("op", ["nestedfp::linear", "nestedfp::linear_prequantized"])
def test_ops_run_the_dispatcher_on_cuda_the_reference_elsewhere_and_trace_by_their_fake(op):
    """Registered as vLLM registers its ops (``kernels.ops.define_op``): a CUDA kernel where Triton imports, the
    reference for every other device, a fake for tracing; and no autograd wrapper of ours on the call path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import kernels.ops  # noqa: F401  (defines the ops)

    pytest.importorskip("triton")
    for key in ("CUDA", "CompositeExplicitAutograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), key
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(op, "Autograd")
    packet = getattr(torch.ops.nestedfp, op.split("::")[1])
    with FakeTensorMode():
        x = torch.empty(3, 7, 64, dtype=torch.float16)
        planes = [torch.empty(40, 64, dtype=torch.uint8)] * 2
        mode = torch.empty(1, dtype=torch.int32)
        codes = [torch.empty(3, 7, 64, dtype=torch.float8_e4m3fn), torch.empty(3, 7, 1)]
        args = (x, *planes, mode, 0) if op == "nestedfp::linear" else (x, *codes, *planes, mode, 0)
        y = packet(*args)
    assert y.shape == (3, 7, 40) and y.dtype == torch.float16


def test_prequantized_fp8_mode_multiplies_the_codes_it_is_given():
    """FP8 mode reads the codes, not x: other codes, another product (so a test of the fused path could fail)."""
    nw = nested_split((torch.randn(24, 32) * 0.05).half())
    x = torch.randn(4, 32).half()
    q, s = quantize_per_token(x)
    q2, s2 = quantize_per_token(x.flip(0))
    a = nested_linear_prequantized(x, q, s, nw, "fp8")
    assert torch.equal(a, nested_linear(x, nw, "fp8"))
    assert torch.equal(nested_linear_prequantized(x, q2, s2, nw, "fp8"), nested_linear(x.flip(0), nw, "fp8"))
    assert torch.equal(nested_linear_prequantized(x, q2, s2, nw, "fp16"), nested_linear(x, nw, "fp16"))


def test_unknown_mode_is_rejected():
    nw = nested_split(torch.zeros(4, 4, dtype=torch.float16))
    with pytest.raises(ValueError):
        nested_linear(torch.zeros(1, 4, dtype=torch.float16), nw, "int4")


def test_nested_fp8_error_is_on_par_with_per_channel_fp8():
    r = compare(n=512, k=512, m=32, seed=torch.randint(0, 10**6, ()).item())
    print("fp8 accuracy:", r)
    assert r["fp16_gemm"] < 1e-3
    assert r["nestedfp8"] < 0.06
    assert r["nestedfp8"] < 1.1 * r["per_channel_fp8"]
