"""A conditional node in a captured CUDA graph: one capture, the branch picked by a device int32 at replay.

On the CPU (CI): captures never take the path, and bad flags are refused. On a GPU whose driver
has conditional IF/ELSE nodes: plain torch work and the NestedFP op, each captured once, replay
the branch (or the eager output) of whichever value the flag holds, flip after flip.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from kernels import cuda_conditional, nested_linear, nested_split, quantize_per_token, triton_dispatch
from kernels.ops import new_mode_tensor, set_host_mode
from tests.kernel_helpers import rel_err


def test_captures_hold_conditional_nodes_only_when_opted_in_and_on_a_gpu():
    x = torch.zeros(4, 64, dtype=torch.float16)
    with mock.patch.object(triton_dispatch, "USE_CONDITIONAL", True):
        assert not triton_dispatch.conditional(x)  # CPU tensors never


def test_the_flag_must_be_a_cuda_int32():
    with pytest.raises(ValueError, match="int32 CUDA"):
        cuda_conditional.if_else(torch.zeros(1, dtype=torch.int32), lambda: None, lambda: None)


def _usable() -> bool:
    return torch.cuda.is_available() and cuda_conditional.available(0)


needs_conditional = pytest.mark.skipif(not _usable(), reason="needs a CUDA driver with conditional nodes")


@needs_conditional
def test_one_capture_runs_the_branch_the_flag_picks_at_each_replay():
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    x = torch.arange(8, dtype=torch.float32, device="cuda")
    y = torch.empty(8, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y.fill_(-1.0)
        cuda_conditional.if_else(flag, lambda: torch.mul(x, 2.0, out=y), lambda: torch.add(x, 100.0, out=y))
        y.add_(0.5)  # work after the node still runs, after the chosen branch
    for value in (1, 0, 1, 1, 0):
        flag.fill_(value)
        g.replay()
        torch.cuda.synchronize()
        want = x * 2.0 + 0.5 if value else x + 100.5
        assert torch.equal(y, want), value


@needs_conditional
@pytest.mark.parametrize("m,dtype,with_bias", [(1, torch.float16, False), (40, torch.float16, True),
                                               (256, torch.bfloat16, False)])
@pytest.mark.parametrize("cublaslt_min_m", [1, 1 << 30])
@pytest.mark.parametrize("prequantized", [False, True])
def test_a_captured_op_replays_the_eager_output_of_each_mode(m, dtype, with_bias, cublaslt_min_m, prequantized):
    """Either op: ``nestedfp::linear``, or ``linear_prequantized`` on codes made before the capture."""
    n, k = 512, 1024
    nw = nested_split((torch.randn(n, k, device="cuda") * 0.05).half())
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    mode = new_mode_tensor("cuda", "fp16")
    if prequantized:
        codes = quantize_per_token(x)
        op = lambda: triton_dispatch.nested_linear_prequantized_cuda(x, *codes, nw.upper, nw.lower, mode, 0, bias)  # noqa: E731
    else:
        op = lambda: triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0, bias)  # noqa: E731
    with mock.patch.object(triton_dispatch, "CUBLASLT_FP8_MIN_M", cublaslt_min_m), \
            mock.patch.object(triton_dispatch, "USE_CONDITIONAL", True):
        eager = {}
        for name in ("fp8", "fp16"):
            set_host_mode(mode, name)
            eager[name] = op().clone()
        g = torch.cuda.CUDAGraph()
        spy = mock.patch.object(cuda_conditional, "if_else", wraps=cuda_conditional.if_else)
        with spy as if_else, torch.cuda.graph(g):
            y = op()
        assert if_else.call_count == 1
        for name in ("fp8", "fp16", "fp8", "fp16"):
            set_host_mode(mode, name)
            y.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, eager[name]), name
    assert rel_err(eager["fp8"], nested_linear(x, nw, "fp8", bias)) < 5e-3
    assert rel_err(eager["fp16"], nested_linear(x, nw, "fp16", bias)) < 5e-3
