"""One launch for both Gluon GEMMs (``kernels.gluon_dual``) and where the op uses it.

CPU: which tile pairs one launch can hold, the dispatcher's launches on the device pick (``act_quant`` then
the dual kernel; three launches where the pair does not fit or the switch is off; host picks unchanged),
and that the wrapper's launch matches the kernel's signature. Hopper GPU: both modes against the reference
on ragged shapes, split-K in either mode, bias + pre-scale + bf16, and a CUDA graph captured once that
follows mode flips, with x and the codes changing between replays.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from kernels import gluon_dual as D
from kernels import nested_linear, triton_dispatch
from kernels.fast_launch import TmaArg
from tests.kernel_helpers import hopper_gluon_problem, nested_weights, rel_err, replays_follow_mode_flips

needs_hopper = pytest.mark.skipif(hopper_gluon_problem() is not None, reason=str(hopper_gluon_problem()))
TOL = {"fp16": 5e-3, "fp8": 5e-3}
# (tile16, cfg8) pairs of the H200 tables' kinds: decode tiles, split-K on either side, 128-row tiles, a
# 9-stage FP16 ring (the deepest the table holds: the larger branch sets the launch's shared memory), and the
# 128 x 256 pairs of M = 256 (8B.gate_up, 70B.qkv), whose two branches each take about 192 KiB.
PAIRS = [((64, 16, 128, 5), (64, 16, 256, 5, 1)), ((64, 16, 128, 5, 2), (64, 16, 256, 10, 1)),
         ((64, 64, 128, 5), (64, 64, 256, 5, 2)), ((128, 16, 128, 5), (128, 16, 256, 5, 1)),
         ((64, 128, 128, 4), (64, 128, 256, 4, 1)), ((64, 128, 64, 9), (64, 128, 256, 4, 1)),
         ((128, 256, 64, 4), (128, 256, 128, 4, 1)), ((128, 256, 64, 4), (128, 256, 64, 8, 1))]
SHAPES = [(1, 4096, 2048), (7, 200, 528), (33, 1008, 1056), (64, 384, 4096), (100, 3024, 2048)]


# ---------------------------------------------------------------------------------------------- CPU


def test_pairs_need_the_same_weight_rows_the_same_grid_and_no_stream_k():
    assert D.pairable((64, 16, 128, 5), (64, 16, 256, 5, 1), 16)
    assert D.pairable((64, 16, 128, 5, 2), (64, 16, 256, 10, 2), 1)
    assert D.pairable((64, 16, 128, 5, 2), (64, 32, 256, 6, 4), 32)  # per weight tile: 2 token tiles x 2 = 1 x 4
    assert not D.pairable((64, 16, 128, 5, 2), (64, 32, 256, 6, 1), 32)  # 4 programs against 1
    assert not D.pairable((64, 16, 128, 5, 2), (64, 16, 256, 10, 1), 1)  # 2 programs per tile against 1
    assert not D.pairable((64, 256, 64, 5), (128, 128, 128, 5, 1), 256)  # one warp count per launch
    assert not D.pairable((64, 64, 128, 5, 0), (64, 64, 256, 5, 1), 64)  # stream-K divides by the grid
    assert not D.pairable(None, (64, 16, 256, 5, 1), 1)
    assert not D.pairable((64, 16, 128, 5), None, 1)
    assert D.pairable((128, 256, 64, 4), (128, 256, 128, 4, 1), 256)
    assert not D.pairable((128, 256, 64, 4), (128, 256, 128, 4, 1, 1), 512)  # past the M it was measured at


def _recorded(monkeypatch, tile16, cfg8):
    calls = []
    monkeypatch.setattr(triton_dispatch, "use_gluon", lambda x2d, upper, lower: tile16)
    monkeypatch.setattr(triton_dispatch, "use_gluon_fp8", lambda x2d, upper: cfg8)

    def act_quant(x2d, mode, out=None, pdl=False):
        calls.append(("act_quant", "pdl" if pdl else "plain"))
        return torch.empty(x2d.shape, dtype=torch.float8_e4m3fn), torch.empty(x2d.shape[0])

    monkeypatch.setattr(triton_dispatch, "act_quant", act_quant)
    monkeypatch.setattr(triton_dispatch.gluon_dual, "nested_dual_gemm_rs",
                        lambda *a, pdl: calls.append(("dual", a[8], a[9], "pdl" if pdl else "plain")))
    monkeypatch.setattr(triton_dispatch.gluon_fp16, "nested_fp16_gemm_rs",
                        lambda *a: calls.append(("fp16",) if a[9] is None else ("fp16", "writes codes")))
    monkeypatch.setattr(triton_dispatch.gluon_fp8, "nested_fp8_gemm_rs",
                        lambda *a, split_k, pdl: calls.append(("fp8", "pdl" if pdl else "plain")))
    return calls


@pytest.mark.parametrize("pick", [None, "fp8", "fp16"])
def test_device_pick_makes_two_launches_where_the_tiles_pair(monkeypatch, pick):
    """Device pick (CUDA graphs): act_quant as a plain launch (it follows another op's kernel), then the dual
    kernel. Host picks run one mode's launches, as before."""
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(16, 512).half()
    tile16, cfg8 = (64, 16, 128, 5, 2), (64, 16, 256, 5, 2)
    calls = _recorded(monkeypatch, tile16, cfg8)
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(16, 256).half(), pick)
    assert calls == {None: [("act_quant", "plain"), ("dual", tile16, cfg8, "pdl")],
                     "fp8": [("act_quant", "plain"), ("fp8", "pdl")],
                     "fp16": [("fp16",)]}[pick]


@pytest.mark.parametrize("pick", [None, "fp8", "fp16"])
@pytest.mark.parametrize("pair", [True, False])
def test_given_codes_drop_act_quant_and_the_early_start_after_the_callers_kernel(monkeypatch, pick, pair):
    """``linear_prequantized``'s launches: no act_quant; the dual kernel and a host-picked FP8 GEMM follow the
    caller's kernel as plain launches; an FP8 GEMM after the FP16 launch keeps its PDL start."""
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(16, 512).half()
    tile16, cfg8 = (64, 16, 128, 5, 2), (64, 16, 256, 5, 2)
    monkeypatch.setattr(triton_dispatch, "USE_DUAL", pair)
    calls = _recorded(monkeypatch, tile16, cfg8)
    given = (torch.empty(16, 512, dtype=torch.float8_e4m3fn), torch.empty(16))
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(16, 256).half(), pick, given)
    device_pick = [("dual", tile16, cfg8, "plain")] if pair else [("fp16",), ("fp8", "pdl")]
    assert calls == {None: device_pick, "fp8": [("fp8", "plain")], "fp16": [("fp16",)]}[pick]


@pytest.mark.parametrize("tile16,cfg8,dual", [((64, 256, 64, 5), (128, 16, 256, 5, 1), True),  # warp counts
                                              ((64, 16, 128, 5, 2), (64, 16, 256, 5, 1), True),  # grids
                                              ((64, 16, 128, 5), (64, 16, 256, 5, 1), False)])  # switched off
def test_device_pick_keeps_three_launches_where_the_tiles_do_not_pair_or_the_switch_is_off(monkeypatch, tile16, cfg8,
                                                                                            dual):
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(16, 512).half()
    monkeypatch.setattr(triton_dispatch, "USE_DUAL", dual)
    calls = _recorded(monkeypatch, tile16, cfg8)
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(16, 256).half(), None)
    assert calls == [("fp16",), ("act_quant", "pdl"), ("fp8", "pdl")]


def test_launch_matches_the_kernel_signature(monkeypatch):
    """The wrapper's launch (captured, no GPU): five descriptors (x, the two planes with the FP16 tile's
    blocks; the codes and the upper plane as E4M3 with the FP8 config's), then the run-time arguments and the
    constexprs in the kernel's order; the grid is the larger mode's program count; a PDL launch."""
    from kernels import split_k

    seen = {}
    monkeypatch.setattr(D.common, "smem_layout", lambda block, dtype: ("nvmma", block, dtype))
    monkeypatch.setattr(D, "launch", lambda kernel, grid, args, consts, nw_, ns, spec, pdl=False: seen.update(
        kernel=kernel, grid=grid, args=args, consts=consts, num_warps=nw_, pdl=pdl))
    monkeypatch.setattr(split_k, "buffers", lambda dev, tiles, partials: (torch.empty(partials),
                                                                          torch.zeros(tiles, dtype=torch.int32)))
    m, n, k = 33, 1000, 1056
    nw = nested_weights(n, k, device="cpu")
    x = torch.randn(m, k).half()
    q = (torch.zeros(m, k, dtype=torch.float8_e4m3fn), torch.ones(m))
    out = torch.empty(m, n).half()
    D.nested_dual_gemm_rs(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 2, None, out, q,
                          (64, 16, 128, 5, 2), (64, 64, 256, 5, 1))
    params = inspect.signature(getattr(seen["kernel"], "fn", seen["kernel"])).parameters.values()
    runtime = [p.name for p in params if p.annotation != "gl.constexpr"]
    consts = [p.name for p in params if p.annotation == "gl.constexpr"]
    assert [p.name for p in params] == runtime + consts, "constexprs must follow every run-time argument"
    assert len(seen["args"]) == len(runtime) and list(seen["consts"]) == consts
    xd, ud, ld, qd, wd = seen["args"][:5]
    assert all(isinstance(d, TmaArg) for d in (xd, ud, ld, qd, wd))
    assert xd.base is x and xd.block_shape == (16, 128) and ud.block_shape == ld.block_shape == (64, 128)
    assert qd.base is q[0] and qd.block_shape == (64, 256) and wd.block_shape == (64, 256)
    assert wd.base is nw.upper and wd.view in (None, torch.float8_e4m3fn)
    args = dict(zip(runtime, seen["args"]))
    assert args["out_scale"] == 4.0 and args["w_scale"] == 2.0 ** (-8 + 2)
    programs16, programs8 = -(-n // 64) * -(-m // 16) * 2, -(-n // 64) * -(-m // 64)
    assert (args["programs16"], args["programs8"]) == (programs16, programs8)
    assert seen["grid"] == max(programs16, programs8)
    assert seen["consts"]["SPLIT16"] == 2 and seen["consts"]["SPLIT8"] == 1 and seen["num_warps"] == 4
    assert seen["pdl"]


# ---------------------------------------------------------------------------------------------- GPU


def _run(x, nw, mode, pair, bias=None):
    """act_quant, then the dual kernel, as the op launches them; returns the output."""
    from kernels.triton_fp8 import act_quant

    out = torch.full((x.shape[0], nw.upper.shape[0]), float("nan"), device="cuda", dtype=x.dtype)
    q = act_quant(x, mode)
    return D.nested_dual_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, bias, out, q, *pair)


@needs_hopper
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "_".join("x".join(map(str, t)) for t in p))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_each_mode_matches_the_reference(m, n, k, pair):
    from kernels.ops import new_mode_tensor

    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    for name in ("fp16", "fp8"):
        y = _run(x, nw, new_mode_tensor("cuda", name), pair)
        assert rel_err(y, nested_linear(x, nw, name)) < TOL[name], name


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_prescale_and_bf16(dtype):
    from kernels.ops import new_mode_tensor

    nw = nested_weights(1008, 1056, amax=6.0)  # amax > 1.875: a pre-scaled layer
    assert nw.scale_exp != 0
    x = torch.randn(33, 1056, device="cuda").to(dtype)
    bias = torch.randn(1008, device="cuda").to(dtype)
    tol = 4 if dtype == torch.bfloat16 else 1
    for name in ("fp16", "fp8"):
        y = _run(x, nw, new_mode_tensor("cuda", name), PAIRS[2], bias)
        assert rel_err(y, nested_linear(x, nw, name, bias)) < TOL[name] * tol, name


@needs_hopper
@pytest.mark.parametrize("m", [1, 16, 64, 128])
def test_one_graph_follows_mode_flips_with_fresh_inputs(m):
    """The op captured once (device pick; the dual kernel where the H200 tables pair): each replay equals the
    eager device-pick call of the mode it runs in, while x changes between replays."""
    from kernels.ops import new_mode_tensor
    from kernels.tuning import gluon_fp8_config, gluon_tile

    n, k = 6144, 4096  # 8B.qkv: the H200 tables pair there up to M = 128
    assert D.pairable(gluon_tile(n, k, m), gluon_fp8_config(n, k, m), m), "the H200 tables should pair here"
    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp16")

    def check(out, name, step):
        eager = triton_dispatch.nested_linear_picked(x, nw.upper, nw.lower, mode, 0, None, False)
        assert torch.equal(out, eager), (step, name)
        assert rel_err(out, nested_linear(x, nw, name)) < TOL[name], (step, name)

    replays_follow_mode_flips(lambda: triton_dispatch.nested_linear_picked(x, nw.upper, nw.lower, mode, 0, None, False),
                              x, mode, check)
