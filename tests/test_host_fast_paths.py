"""The op's host-side fast paths: direct kernel launches and cuBLASLt FP8 at eager large M.

On a CUDA GPU: launches through the cached C launcher (with TMA descriptors encoded once) give the
same bits as Triton's own launch path, in both modes and under a CUDA graph; eager large-M FP8
calls run cuBLASLt on the upper plane and match the FP8 reference; shapes cuBLASLt cannot take
fall back to the Triton kernel. On the CPU (CI): the host arithmetic and the descriptor wrapper.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import triton

from kernels import cublaslt_fp8, fast_launch, gluon_fp16, nested_linear, nested_split, triton_dispatch
from kernels.ops import new_mode_tensor, set_host_mode
from tests.kernel_helpers import rel_err

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _weights(n: int, k: int, device: str = "cuda"):
    return nested_split((torch.randn(n, k, device=device) * 0.05).half())


def test_cdiv_matches_triton_cdiv():
    for a in (0, 1, 15, 16, 17, 4097, 10**9 + 7):
        for b in (1, 16, 64, 128):
            assert fast_launch.cdiv(a, b) == triton.cdiv(a, b)


@pytest.mark.skipif(gluon_fp16._IMPORT_ERROR is not None, reason="this Triton's Gluon does not import here")
def test_tma_arg_descriptor_reads_the_base_through_its_view_dtype():
    gl = gluon_fp16.gl
    plane = torch.zeros(64, 128, dtype=torch.float8_e4m3fn)
    layout = gl.NVMMASharedLayout.get_default_for([64, 64], gl.uint8)
    d = fast_launch.TmaArg(plane, (64, 128), (128, 1), (64, 64), layout, torch.uint8).descriptor()
    assert d.base.dtype == torch.uint8 and d.base.data_ptr() == plane.data_ptr()
    assert list(d.shape) == [64, 128] and list(d.block_shape) == [64, 64]


@needs_cuda
@pytest.mark.parametrize("m", [1, 16, 64, 200])
def test_direct_launches_give_the_bits_of_tritons_launch_path(m):
    n, k = 384, 1024
    nw = _weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    for name in ("fp16", "fp8"):
        mode = new_mode_tensor("cuda", name)
        with mock.patch.object(fast_launch, "_DIRECT", {}):  # every launch through Triton (and recorded)
            first = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
            assert fast_launch._DIRECT, "the first launch records a direct launcher"
            again = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)  # direct
        assert torch.equal(first, again), name
        assert rel_err(again, nested_linear(x, nw, name)) < 5e-3


@needs_cuda
def test_direct_launches_follow_the_mode_under_a_cuda_graph():
    n, k, m = 256, 512, 48
    nw = _weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp16")
    triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)  # compile + record
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    for name in ("fp8", "fp16", "fp8"):
        set_host_mode(mode, name)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)), name


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_m_fp8_runs_cublaslt_on_the_upper_plane(dtype):
    if not cublaslt_fp8._fp8_gpu(0):
        pytest.skip("cuBLASLt FP8 needs sm_89+")
    n, k, m = 512, 1024, triton_dispatch.LARGE_M_THRESHOLD
    nw = _weights(n, k)
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    mode = new_mode_tensor("cuda", "fp8")
    with mock.patch.object(cublaslt_fp8, "nested_fp8_scaled_mm", wraps=cublaslt_fp8.nested_fp8_scaled_mm) as spy:
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0, bias)
    assert spy.call_count == 1 and y.dtype == dtype
    assert rel_err(y, nested_linear(x, nw, "fp8", bias)) < 5e-3


@needs_cuda
def test_large_m_fp8_falls_back_to_triton_where_cublaslt_cannot_take_the_shape():
    n, k, m = 200, 1000, triton_dispatch.LARGE_M_THRESHOLD + 3  # N, K not multiples of 16
    nw = _weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp8")
    assert not cublaslt_fp8.usable(x, nw.upper)
    with mock.patch.object(cublaslt_fp8, "nested_fp8_scaled_mm") as spy:
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    assert spy.call_count == 0
    assert rel_err(y, nested_linear(x, nw, "fp8")) < 5e-3


def test_kernels_emit_grid_dependency_control_only_on_sm90_and_later():
    """``griddepcontrol`` is sm_90 PTX: act_quant and the Triton FP16 kernel get it through a constexpr
    (``GDC``) that is off for CPU tensors (the interpreter) and for GPUs before Hopper."""
    from kernels.fast_launch import has_gdc

    assert not has_gdc(torch.zeros(1))
    if torch.cuda.is_available():
        assert has_gdc(torch.zeros(1, device="cuda")) == (torch.cuda.get_device_capability()[0] >= 9)
