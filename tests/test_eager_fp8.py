"""Prepared eager FP8 calls (``kernels.eager_fp8``): a later call of a layer at one M makes the launches the
dispatcher made for the first, and only where the dispatcher would make them.

On the CPU (CI): the dispatcher takes a plan only when its picks still hold, and falls back otherwise; a plan is
found only for an eager call in FP8 mode on 2-D x; ``run_direct`` launches nothing while a launch hook is set.
On an H200: planned calls write the bits of the dispatcher's path (table shapes, bias, bf16, split-K configs; on
cuBLASLt from M = 1024), follow mode flips, step aside for a profiler's hook, inside CUDA-graph captures and when
a pick changes.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from kernels import cublaslt_fp8, eager_fp8, fast_launch, gluon_common, nested_linear, nested_split, triton_dispatch
from kernels.ops import new_mode_tensor, set_host_mode
from kernels.tuning import gluon_fp8_config
from tests.kernel_helpers import rel_err


@pytest.fixture(autouse=True)
def _no_plans():
    eager_fp8.clear()
    yield
    eager_fp8.clear()


def _plan(picks: tuple = ("cfg",)) -> eager_fp8.Plan:
    return eager_fp8.Plan(*([None] * (len(eager_fp8.Plan._fields) - 1)), picks=picks)


def test_dispatcher_takes_a_plan_only_while_its_picks_hold():
    x, upper, lower = torch.zeros(1, 64, dtype=torch.float16), torch.zeros(32, 64), torch.zeros(32, 64)
    mode = new_mode_tensor("cpu", "fp8")
    planned, slow = torch.ones(1), torch.full((1,), 2.0)
    with mock.patch.object(eager_fp8, "lookup", return_value=_plan(("cfg",))), \
            mock.patch.object(eager_fp8, "run", return_value=planned) as run, \
            mock.patch.object(triton_dispatch, "nested_linear_picked", return_value=slow), \
            mock.patch.object(triton_dispatch, "_fp8_picks", return_value=("cfg",)) as picks:
        assert triton_dispatch.nested_linear_cuda(x, upper, lower, mode, 0) is planned
        picks.return_value = ("another cfg",)  # e.g. the FP8 table patched, or PDL turned off
        assert triton_dispatch.nested_linear_cuda(x, upper, lower, mode, 0) is slow
        run.reset_mock()
        with mock.patch.object(triton_dispatch, "HOST_PICK", False):  # the device pick (as graphs run)
            picks.return_value = ("cfg",)
            assert triton_dispatch.nested_linear_cuda(x, upper, lower, mode, 0) is slow
        run.assert_not_called()
        run.return_value = None  # a launch hook set: the plan launched nothing
        assert triton_dispatch.nested_linear_cuda(x, upper, lower, mode, 0) is slow


def test_a_plan_is_found_only_for_eager_fp8_calls_on_2d_x():
    x, upper = torch.zeros(4, 64, dtype=torch.float16), torch.zeros(32, 64)
    mode = new_mode_tensor("cpu", "fp8")
    key = eager_fp8._key(x, upper, mode, 0, None)
    eager_fp8._PLANS[key] = plan = _plan()
    assert eager_fp8.lookup(x, upper, mode, 0, None) is plan
    assert eager_fp8.lookup(x, upper, mode, 1, None) is None  # another pre-scale
    assert eager_fp8.lookup(x, upper, mode, 0, torch.zeros(32)) is None  # a bias
    assert eager_fp8.lookup(torch.zeros(5, 64, dtype=torch.float16), upper, mode, 0, None) is None  # another M
    assert eager_fp8.lookup(x.view(2, 2, 64), upper, mode, 0, None) is None  # 3-D x: the op reshapes it
    with mock.patch.object(eager_fp8, "_capturing", return_value=True):
        assert eager_fp8.lookup(x, upper, mode, 0, None) is None
    set_host_mode(mode, "fp16")
    assert eager_fp8.lookup(x, upper, mode, 0, None) is None
    set_host_mode(mode, "fp8")
    assert eager_fp8.lookup(x, upper, mode, 0, None) is plan


def test_run_direct_launches_nothing_while_a_launch_hook_is_set():
    raw = mock.Mock()
    hit = fast_launch._Direct(raw, 1, None, False, False, 0, (), ())
    with mock.patch.object(fast_launch, "_hooks_set", return_value=True):
        assert fast_launch.run_direct(hit, 4, (1, 2)) is False
    raw.assert_not_called()


def test_codes_share_one_aligned_buffer_per_stream_and_grow_as_needed():
    cpu = torch.device("cpu")
    q, s, s_col = eager_fp8._codes(cpu, 3, 40)
    assert q.shape == (3, 40) and q.dtype == torch.float8_e4m3fn and s.shape == (3,) and s.dtype == torch.float32
    assert s_col.shape == (3, 1) and s_col.data_ptr() == s.data_ptr()
    assert (s.data_ptr() - q.data_ptr()) % 16 == 0 and s.data_ptr() >= q.data_ptr() + q.numel()  # no overlap
    assert eager_fp8._codes(cpu, 3, 40)[0] is q, "the views are kept"
    q2 = eager_fp8._codes(cpu, 64, 4096)[0]  # larger: a new buffer
    assert q2.untyped_storage().nbytes() >= 64 * 4096 + 4 * 64
    q3 = eager_fp8._codes(cpu, 3, 40)[0]
    assert q3.untyped_storage().data_ptr() == q2.untyped_storage().data_ptr(), "every view in the current buffer"


# ---------------------------------------------------------------------------------------------------- H200

needs_hopper = pytest.mark.skipif(not (torch.cuda.is_available() and gluon_common.available(0)),
                                  reason="needs an sm_90 GPU with Gluon (the Gluon FP8 GEMM)")
SHAPES = {"8B.o": (4096, 4096), "8B.down": (4096, 14336), "8B.gate_up": (28672, 4096), "8B.qkv": (6144, 4096)}


def _case(shape: str, m: int, dtype: torch.dtype, with_bias: bool):
    n, k = SHAPES[shape]
    nw = nested_split((torch.randn(n, k, device="cuda") * 0.05).half())
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    return nw, x, b


@needs_hopper
@pytest.mark.parametrize("shape,m,dtype,with_bias", [
    ("8B.o", 1, torch.float16, False), ("8B.o", 16, torch.bfloat16, True), ("8B.o", 64, torch.float16, True),
    ("8B.down", 7, torch.float16, False), ("8B.down", 64, torch.bfloat16, False),  # 64: a split-K config
    ("8B.gate_up", 33, torch.float16, True),
])
def test_planned_calls_write_the_bits_of_the_dispatchers_path(shape, m, dtype, with_bias):
    nw, x, b = _case(shape, m, dtype, with_bias)
    assert gluon_fp8_config(nw.upper.shape[0], x.shape[1], m) is not None, "a shape the Gluon FP8 table covers"
    mode = new_mode_tensor("cuda", "fp8")
    slow = [triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b) for _ in range(2)]
    assert eager_fp8._PLANS, "the second call (launched directly) was recorded"
    with mock.patch.object(triton_dispatch, "nested_linear_picked", side_effect=AssertionError("not planned")):
        planned = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
    assert torch.equal(planned, slow[1]) and torch.equal(slow[0], slow[1])
    tol = 1e-2 if dtype == torch.bfloat16 else 5e-3
    assert rel_err(planned, nested_linear(x, nw, "fp8", b)) < tol


def _planned(shape: str, m: int):
    """A layer, x and an FP8 mode tensor after two eager calls (the second recorded a plan), and their output."""
    nw, x, _ = _case(shape, m, torch.float16, False)
    mode = new_mode_tensor("cuda", "fp8")
    for _ in range(2):
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    assert eager_fp8._PLANS
    return nw, x, mode, y


@needs_hopper
def test_planned_calls_follow_mode_flips_and_step_aside_in_captures():
    nw, x, mode, fp8 = _planned("8B.o", 16)
    set_host_mode(mode, "fp16")
    assert rel_err(triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0), nested_linear(x, nw, "fp16")) \
        < 1e-3
    set_host_mode(mode, "fp8")
    assert torch.equal(triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0), fp8)  # planned again
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):  # the device pick: both precisions' launches, the mode read on the device
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    for name in ("fp16", "fp8"):
        set_host_mode(mode, name)
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(y, nested_linear(x, nw, name)) < 5e-3, name


@needs_hopper
def test_a_launch_hook_sees_every_launch_of_a_planned_call():
    import triton

    nw, x, mode, expected = _planned("8B.o", 1)
    seen = []
    runtime = triton.knobs.runtime
    old = runtime.launch_enter_hook
    runtime.launch_enter_hook = lambda metadata: seen.append(metadata)
    try:
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    finally:
        runtime.launch_enter_hook = old
    assert len(seen) == 2, "act_quant and the GEMM, through Triton's launch path"
    assert torch.equal(y, expected)


@needs_hopper
def test_planned_calls_of_two_layers_back_to_back_share_the_codes_buffer_safely():
    nw_a, x_a, _ = _case("8B.o", 16, torch.float16, False)
    nw_b, x_b, b_b = _case("8B.down", 16, torch.float16, True)
    mode = new_mode_tensor("cuda", "fp8")
    calls = [(x_a, nw_a, None), (x_b, nw_b, b_b)]
    expected = []
    for x, nw, b in calls:
        for _ in range(2):
            y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
        expected.append(y)
    assert len(eager_fp8._PLANS) == 2
    with mock.patch.object(triton_dispatch, "nested_linear_picked", side_effect=AssertionError("not planned")):
        got = [triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
               for _ in range(5) for x, nw, b in calls]  # no sync between: stream order alone keeps them apart
    torch.cuda.synchronize()
    for i, y in enumerate(got):
        assert torch.equal(y, expected[i % 2]), i


@needs_hopper
@pytest.mark.parametrize("m,dtype,with_bias", [(1024, torch.float16, False), (1536, torch.bfloat16, True)])
def test_planned_cublaslt_calls_write_the_bits_of_the_dispatchers_path(m, dtype, with_bias):
    nw, x, b = _case("8B.qkv", m, dtype, with_bias)
    assert triton_dispatch.fp8_on_cublaslt(x, nw.upper), "a cell cuBLASLt takes (no Gluon FP8 entry)"
    mode = new_mode_tensor("cuda", "fp8")
    slow = [triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b) for _ in range(2)]
    assert [type(p) for p in eager_fp8._PLANS.values()] == [eager_fp8.LtPlan]
    with mock.patch.object(triton_dispatch, "nested_linear_picked", side_effect=AssertionError("not planned")):
        planned = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
    assert torch.equal(planned, slow[1])
    with mock.patch.object(cublaslt_fp8, "USE_CUBLASLT_FP8", False), \
            mock.patch.object(triton_dispatch, "nested_linear_picked",
                              wraps=triton_dispatch.nested_linear_picked) as dispatcher:
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)  # the Triton FP8 GEMM
    dispatcher.assert_called_once()
    tol = 1e-2 if dtype == torch.bfloat16 else 5e-3
    assert rel_err(y, nested_linear(x, nw, "fp8", b)) < tol and rel_err(planned, nested_linear(x, nw, "fp8", b)) < tol
