"""The Gluon NestedFP8 GEMM (``kernels.gluon_fp8``), its H200 table and how the op launches it.

On a Hopper GPU with a Triton that has Gluon: the kernel against ``kernels.reference`` on ragged
shapes (output poisoned with NaN, so an unwritten tile fails), bias + pre-scale + bf16, split-K, the
device-side mode (only mode 1 writes), a CUDA-graph replay across mode flips, and the programmatic
dependent launch after ``act_quant`` (codes poisoned before each replay). Everywhere else (CPU CI) those
skip; what runs there is the tile checks, the table's lookup and writer, the dispatcher's launch order
(launches captured), that the module imports without a GPU and refuses to run with a clear error, and
that the wrapper's launch matches the kernel's signature (descriptor order, block shapes, constexprs).
"""

from __future__ import annotations

import pytest
import torch

from kernels import gluon_fp8 as G
from kernels import gluon_fp16, nested_linear, triton_dispatch, tuning
from kernels.fast_launch import TmaArg
from tests.kernel_helpers import hopper_gluon_problem, nested_weights, rel_err

FP8_TOL = 5e-3  # against the reference's own quantization (kernels.bench uses the same)
needs_hopper = pytest.mark.skipif(hopper_gluon_problem() is not None, reason=str(hopper_gluon_problem()))

# (M, N, K): M ragged against block_t (1, 7, 16, 33, 64), N not a multiple of block_w (200: not even of
# 16), K not of block_k (multiples of 16, as TMA needs), rings that wrap.
SHAPES = [(1, 4096, 2048), (7, 200, 528), (16, 1008, 1056), (33, 3024, 2048), (64, 384, 4096)]
TILES = [(64, 16, 128, 8), (64, 16, 256, 10), (128, 16, 128, 10), (64, 64, 256, 5), (128, 64, 128, 6)]


def _case(shape: tuple[int, int, int], amax: float = 0.5, dtype: torch.dtype = torch.float16):
    """(nw, x, xq, xs, mode): weights for (M, N, K), x [M, K] and its per-token codes and scales
    (``act_quant``), and the FP8-mode tensor that quantized them."""
    from kernels.ops import new_mode_tensor
    from kernels.triton_fp8 import act_quant

    m, n, k = shape
    nw = nested_weights(n, k, amax)
    mode = new_mode_tensor("cuda", "fp8")
    x = torch.randn(m, k, device="cuda").to(dtype)
    xq, xs = act_quant(x, mode)
    return nw, x, xq, xs, mode


def _product(xq, xs, nw, bias=None, dtype=torch.float16):
    """The reference product on the given codes (``kernels.reference.fp8_linear_reference``'s arithmetic)."""
    y = (xq.float() @ nw.upper.float().t()) * (xs.view(-1, 1) * nw.fp8_weight_scale)
    return (y if bias is None else y + bias.float()).to(dtype)


# ---------------------------------------------------------------------------------------------- CPU


def test_config_checks_refuse_tiles_that_cannot_fit():
    assert G.config_problem(64, 16, 128, 4) is None
    assert G.config_problem(64, 16, 256, 10) is None
    assert "shared memory" in G.config_problem(128, 256, 256, 4)
    assert "block_w" in G.config_problem(32, 16, 128, 4)
    assert "block_t" in G.config_problem(64, 48, 128, 4)
    assert "block_t" in G.config_problem(64, 8, 128, 4)
    assert "block_k" in G.config_problem(64, 16, 32, 4)
    assert "stages" in G.config_problem(64, 16, 128, 1)
    assert G.smem_bytes(64, 16, 128, 8) == 8 * 80 * 128 + 32 * 64 + 512


def test_default_tiles_fit_and_splits_only_where_they_compiled_without_spills():
    for t in G.TILES:
        assert G.config_problem(*t) is None, t
    configs = G.check_configs()
    assert len(set(configs)) == len(configs)
    assert {c[:4] for c in configs} == set(G.TILES)
    for c in configs:
        assert c[4] == 1 or (c[0] == 64 and c[1] <= 64), c


def test_configs_for_cap_the_token_tile_and_split_short_grids():
    from kernels.tuning import token_cap

    for m in (1, 16, 64, 128, 256):
        for n in (4096, 28672):
            got = G.configs_for(m, n, 132)
            assert got and set(got) <= set(G.check_configs())
            assert all(token_cap(m) // 2 <= c[1] <= token_cap(m) for c in got), (m, got)
    # 8B.o at M = 1: 64 tiles of 64 rows for 132 SMs: split 2 and 4 are timed; 8B.gate_up (448 tiles): neither
    assert (64, 16, 128, 8, 2) in G.configs_for(1, 4096, 132)
    assert (64, 16, 128, 8, 4) in G.configs_for(1, 4096, 132)
    assert all(c[4] == 1 for c in G.configs_for(1, 28672, 132))


def test_table_lookup_takes_the_next_measured_m_caps_the_token_tile_and_stops_past_the_last_m():
    entries = tuning._load(tuning.GLUON_FP8_TABLE_PATH, "configs")["6144x4096"]
    assert tuning.gluon_fp8_config(6144, 4096, 64) == tuple(entries["64"])
    nxt = entries["128"]
    assert tuning.gluon_fp8_config(6144, 4096, 65) == (nxt[0], 128, *nxt[2:])  # the next measured M up
    assert tuning.gluon_fp8_config(6144, 4096, 17)[1] <= 32  # token tile capped at M's power of two
    largest = max(int(m) for m in entries)
    assert tuning.gluon_fp8_config(6144, 4096, largest + 1) is None  # past the largest measured M: not measured
    assert tuning.gluon_fp8_config(1000, 1008, 16) == tuning.gluon_fp8_heuristic_config(1000, 16)  # not in it


def test_every_table_config_is_one_the_sweep_checked():
    table = tuning._load(tuning.GLUON_FP8_TABLE_PATH, "configs")
    assert table, "the committed H200 table"
    for shape, entries in table.items():
        for m, cfg in entries.items():
            assert cfg is None or tuple(cfg[:5]) in G.check_configs(), (shape, m, cfg)
            assert cfg is None or len(cfg) == (6 if int(m) >= tuning.FP8_PDL_CHOICE_FROM_M else 5), (shape, m, cfg)


@pytest.mark.parametrize("n", [1000, 4096, 8448, 8449, 28672])
def test_shapes_the_table_lacks_get_a_checked_config_up_to_m_256_by_their_weight_rows(n):
    """128-row tiles once N / 64 exceeds the H200's 132 SMs, 64-row tiles below; token tiles as M needs."""
    for m in (1, 7, 16, 17, 64, 65, 128, 200, 256):
        cfg = tuning.gluon_fp8_heuristic_config(n, m)
        # a config the sweep checks, its token tile narrowed to what M needs (as table entries are)
        assert any(c[0] == cfg[0] and c[1] >= cfg[1] and c[2:] == cfg[2:] for c in G.check_configs()), (n, m, cfg)
        assert cfg[1] <= tuning.token_cap(m), (n, m, cfg)
        if m <= 128:
            assert cfg[0] == (128 if n > 64 * 132 else 64), (n, m, cfg)
    assert tuning.gluon_fp8_heuristic_config(n, 257) is None


def test_table_writer_picks_gluon_only_where_the_op_path_ran_faster(tmp_path):
    import json

    row = dict(shape="s", n=256, k=512, best_cfg=[64, 16, 256, 5, 1], best_us=5.0, triton_fp8_us=9.0)
    rows = [
        dict(row, m=1, op_triton_us=10.0, op_gluon_pdl_us=8.0),  # Gluon + PDL won the op
        dict(row, m=16, op_triton_us=10.0, op_gluon_pdl_us=11.0),  # faster alone, slower in the op: Triton
        dict(row, m=64),  # the PDL check failed (no op timings): left out
    ]
    src = tmp_path / "sweep.json"
    src.write_text(json.dumps(dict(meta=dict(device="H200", date="d", triton="3.6.0"), rows=rows)))
    out = tmp_path / "table.json"
    table = tuning.write_gluon_fp8_table(str(src), str(out))
    assert table["configs"] == {"256x512": {"1": [64, 16, 256, 5, 1], "16": None}}
    assert json.loads(out.read_text())["configs"] == table["configs"]


def _large_m_row(m: int, **ops) -> dict:
    row = dict(shape="s", n=256, k=512, m=m, best_cfg=[128, 256, 128, 4, 1], best_us=80.0, cublaslt_fp8_us=80.0,
               triton_fp8_us=90.0, op_triton_us=100.0, op_cublaslt_us=100.0, op_gluon_us=95.0, op_gluon_pdl_us=97.0)
    return {**row, **ops}


def _write_sweeps(tmp_path, *runs: list[dict]) -> list[str]:
    import json

    paths = []
    for i, rows in enumerate(runs):
        src = tmp_path / f"sweep{i}.json"
        src.write_text(json.dumps(dict(meta=dict(device="H200", date=f"d{i}", triton="3.6.0"), rows=rows)))
        paths.append(str(src))
    return paths


def test_table_writer_from_m_512_picks_pdl_or_plain_and_must_beat_what_runs_without_it(tmp_path):
    """From 512 up an entry says whether its GEMM is a PDL launch, needs a 2% lead over the Triton op where it
    covers M below LARGE_M_THRESHOLD and over cuBLASLt's op where it reaches it, the same lead in eager calls
    where the sweep timed them, and a GEMM no slower than cuBLASLt's alone (vLLM calls it on given codes)."""
    rows = [
        _large_m_row(512),  # plain 95 beats Triton 100 by more than 2%: entry, plain
        _large_m_row(1024, op_gluon_pdl_us=90.0),  # PDL faster, ahead of both rivals (covers 513..1024)
        _large_m_row(2048, op_triton_us=50.0),  # Triton is no rival from 1025 up (the host pick runs cuBLASLt)
        _large_m_row(4096, op_cublaslt_us=96.0),  # 95 against 96: within the margin
        _large_m_row(8192, best_us=81.0),  # the op wins, but the GEMM alone is slower than cuBLASLt's
        dict(_large_m_row(512), n=128, op_eager_gluon_us=60.0, op_eager_without_us=40.0),  # eager: the host's
        dict(_large_m_row(512), n=64, op_eager_gluon_us=60.0, op_eager_without_us=70.0),  # eager lead too
    ]
    out = tmp_path / "table.json"
    table = tuning.write_gluon_fp8_table(_write_sweeps(tmp_path, rows), str(out))
    assert table["configs"] == {"256x512": {"512": [128, 256, 128, 4, 1, 0], "1024": [128, 256, 128, 4, 1, 1],
                                           "2048": [128, 256, 128, 4, 1, 0], "4096": None, "8192": None},
                                "128x512": {"512": None}, "64x512": {"512": [128, 256, 128, 4, 1, 0]}}


def test_table_writer_with_repeated_sweeps_needs_each_to_agree_and_update_keeps_the_rest(tmp_path):
    import json

    out = tmp_path / "table.json"
    out.write_text(json.dumps(dict(source="old.json", date="d", configs={"256x512": {"1": [64, 16, 256, 5, 1]},
                                                                        "1x16": {"16": None}})))
    first = [_large_m_row(512), _large_m_row(1024)]
    second = [_large_m_row(512), _large_m_row(1024, op_gluon_us=99.0, op_gluon_pdl_us=99.0)]  # lost in the 2nd
    table = tuning.write_gluon_fp8_table(_write_sweeps(tmp_path, first, second), str(out), update=True)
    assert table["configs"] == {"256x512": {"1": [64, 16, 256, 5, 1], "512": [128, 256, 128, 4, 1, 0],
                                           "1024": None}, "1x16": {"16": None}}
    assert table["source"] == "old.json (d), then sweep0.json,sweep1.json"


def test_table_writer_update_below_512_adds_and_replaces_entries_but_does_not_drop_one(tmp_path):
    """Below 512 the sweep's rival is act_quant + the Triton GEMM, not the graph path without an entry (the FP16
    launch quantizing), so a sweep that finds the Triton op faster leaves an existing entry in place."""
    import json

    out = tmp_path / "table.json"
    out.write_text(json.dumps(dict(source="old.json", date="d", configs={
        "256x512": {"64": [64, 64, 256, 5, 1], "256": [128, 128, 128, 5, 1]}})))
    row = dict(shape="s", n=256, k=512, best_us=5.0, triton_fp8_us=9.0)
    rows = [dict(row, m=64, best_cfg=[64, 64, 256, 4, 1], op_triton_us=10.0, op_gluon_pdl_us=8.0),  # replaced
            dict(row, m=256, best_cfg=[128, 256, 128, 4, 1], op_triton_us=10.0, op_gluon_pdl_us=11.0),  # kept
            dict(row, m=128, best_cfg=[64, 128, 256, 4, 1], op_triton_us=10.0, op_gluon_pdl_us=11.0)]  # none
    table = tuning.write_gluon_fp8_table(_write_sweeps(tmp_path, rows), str(out), update=True)
    assert table["configs"] == {"256x512": {"64": [64, 64, 256, 4, 1], "128": None, "256": [128, 128, 128, 5, 1]}}


def _recorded_launches(monkeypatch, gluon8):
    """The dispatcher's launches for one call, recorded instead of run (CPU tensors, no GPU)."""
    calls = []
    monkeypatch.setattr(triton_dispatch, "use_gluon_fp8", lambda x2d, upper: gluon8)
    monkeypatch.setattr(triton_dispatch, "use_gluon", lambda x2d, upper, lower: None)
    monkeypatch.setattr(triton_dispatch, "nested_fp16_gemm",
                        lambda *a: calls.append(("fp16", "quant" if a[-1] is not None else "no quant")))

    def act_quant(x2d, mode, out=None, pdl=False):
        calls.append(("act_quant", "pdl" if pdl else "plain"))
        return torch.empty(x2d.shape, dtype=torch.float8_e4m3fn), torch.empty(x2d.shape[0])

    monkeypatch.setattr(triton_dispatch, "act_quant", act_quant)
    monkeypatch.setattr(triton_dispatch.gluon_fp8, "nested_fp8_gemm_rs", lambda *a, split_k, pdl: calls.append(
        ("gluon_fp8", "pdl" if pdl else "plain", a[7], split_k)))
    monkeypatch.setattr(triton_dispatch, "nested_fp8_gemm", lambda *a: calls.append(("triton_fp8",)))
    return calls


@pytest.mark.parametrize("pick", [None, "fp8", "fp16"])
def test_dispatcher_launches_the_gluon_fp8_gemm_as_a_dependent_of_the_quantization(monkeypatch, pick):
    """Device pick (CUDA graphs): the FP16 launch quantizes nothing, act_quant follows it as a programmatic
    dependent (it reads only x) and the GEMM follows act_quant the same way. Host pick, FP8: act_quant then
    the dependent GEMM. FP16: the FP16 launch alone."""
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(16, 512).half()
    calls = _recorded_launches(monkeypatch, (64, 16, 256, 5, 2))
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(16, 256).half(), pick)
    gemm = ("gluon_fp8", "pdl", (64, 16, 256, 5), 2)
    assert calls == {None: [("fp16", "no quant"), ("act_quant", "pdl"), gemm],
                     "fp8": [("act_quant", "plain"), gemm],
                     "fp16": [("fp16", "no quant")]}[pick]


@pytest.mark.parametrize("pdl", [0, 1])
def test_dispatcher_launches_a_large_m_gemm_as_its_table_entry_says(monkeypatch, pdl):
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(16, 512).half()
    calls = _recorded_launches(monkeypatch, (128, 16, 128, 4, 1, pdl))
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(16, 256).half(), "fp8")
    assert calls == [("act_quant", "plain"), ("gluon_fp8", "pdl" if pdl else "plain", (128, 16, 128, 4), 1)]


def test_cublaslt_gives_way_where_the_gluon_fp8_table_measured_its_kernel_faster(monkeypatch):
    x = torch.empty(triton_dispatch.LARGE_M_THRESHOLD, 512).half()
    upper = torch.empty(256, 512, dtype=torch.uint8)
    monkeypatch.setattr(triton_dispatch.cublaslt_fp8, "usable", lambda x2d, up: True)
    monkeypatch.setattr(triton_dispatch, "use_gluon_fp8", lambda x2d, up: None)
    assert triton_dispatch.fp8_on_cublaslt(x, upper)
    assert not triton_dispatch.fp8_on_cublaslt(x[:-1], upper)  # below LARGE_M_THRESHOLD
    monkeypatch.setattr(triton_dispatch, "use_gluon_fp8", lambda x2d, up: (128, 256, 128, 4, 1, 1))
    assert not triton_dispatch.fp8_on_cublaslt(x, upper)


def test_dispatcher_keeps_the_triton_fp8_path_where_the_table_has_no_gluon_config(monkeypatch):
    """There the FP16 launch quantizes x for the Triton GEMM (decode: a program for every row or more),
    unless the Triton config quantizes inside the GEMM."""
    nw = nested_weights(256, 512, device="cpu")
    x = torch.randn(1, 512).half()
    calls = _recorded_launches(monkeypatch, None)
    triton_dispatch._launch(x, nw.upper, nw.lower, torch.ones(1, dtype=torch.int32), 0, None,
                            torch.empty(1, 256).half(), None)
    fused = tuning.get_config("fp8", 256, 512, 1).fused_quant
    assert calls == [("fp16", "no quant" if fused else "quant"), ("triton_fp8",)]


def test_dispatcher_keeps_cpu_tensors_off_the_gluon_fp8_gemm():
    nw = nested_weights(6144, 4096, device="cpu")
    assert triton_dispatch.use_gluon_fp8(torch.randn(16, 4096).half(), nw.upper) is None


def test_module_imports_without_a_gpu_and_shares_the_fp16_kernels_error():
    assert G.GluonUnavailable is gluon_fp16.GluonUnavailable
    assert callable(G.nested_fp8_gemm_rs)


def test_refuses_to_run_off_hopper_with_a_clear_error():
    if hopper_gluon_problem() is None:
        pytest.skip("this machine can run the kernel")
    nw = nested_weights(64, 64, device="cpu")
    xq = torch.zeros(4, 64, dtype=torch.float8_e4m3fn)
    with pytest.raises(G.GluonUnavailable):
        G.nested_fp8_gemm_rs(xq, torch.ones(4), nw.upper, torch.ones(1, dtype=torch.int32), 0)


def test_operand_checks():
    nw = nested_weights(64, 64, device="cpu")
    mode = torch.ones(1, dtype=torch.int32)
    xq = torch.zeros(4, 64, dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError):
        G.nested_fp8_gemm_rs(xq.view(torch.uint8), torch.ones(4), nw.upper, mode, 0)  # codes as bytes
    with pytest.raises(ValueError, match="shape"):
        G.nested_fp8_gemm_rs(xq[:, :32], torch.ones(4), nw.upper, mode, 0)
    with pytest.raises(ValueError, match="xs"):
        G.nested_fp8_gemm_rs(xq, torch.ones(3), nw.upper, mode, 0)
    with pytest.raises(ValueError, match="out"):
        G.nested_fp8_gemm_rs(xq, torch.ones(4), nw.upper, mode, 0, out=torch.empty(4, 64))  # fp32 out


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("plane", [torch.float8_e4m3fn, torch.uint8])
def test_launch_matches_the_kernel_signature(monkeypatch, plane, split):
    """The wrapper's launch (captured, no GPU): descriptors lead, x's before the plane's, with the tile's
    block shapes (the plane read as E4M3 whatever its stored dtype); the run-time arguments then the
    constexprs the kernel declares (fast_launch's direct path needs that order); one program per tile
    and split. Runs without Gluon too: the shared-memory layouts are stubbed and the kernel's parameters
    are read from its Python signature (``gl.constexpr`` annotations)."""
    import inspect

    from kernels import split_k

    seen = {}
    monkeypatch.setattr(G, "_check", lambda *a: None)
    monkeypatch.setattr(G.common, "smem_layout", lambda block, dtype: ("nvmma", block, dtype))
    monkeypatch.setattr(G, "launch", lambda kernel, grid, args, consts, nw_, ns, spec, pdl=False: seen.update(
        kernel=kernel, grid=grid, args=args, consts=consts, num_warps=nw_, num_stages=ns, pdl=pdl))
    monkeypatch.setattr(split_k, "buffers", lambda dev, tiles, partials: (torch.empty(partials),
                                                                          torch.zeros(tiles, dtype=torch.int32)))
    m, n, k, tile = 33, 1000, 1056, (64, 32, 256, 6)
    xq = torch.zeros(m, k, dtype=torch.float8_e4m3fn)
    upper = torch.zeros(n, k, dtype=plane)
    y = G.nested_fp8_gemm_rs(xq, torch.ones(m), upper, torch.ones(1, dtype=torch.int32), 2, tile=tile,
                             out_dtype=torch.bfloat16, split_k=split, pdl=split == 2)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    params = inspect.signature(getattr(seen["kernel"], "fn", seen["kernel"])).parameters.values()
    runtime = [p.name for p in params if p.annotation != "gl.constexpr"]
    consts = [p.name for p in params if p.annotation == "gl.constexpr"]
    assert [p.name for p in params] == runtime + consts, "constexprs must follow every run-time argument"
    assert len(seen["args"]) == len(runtime) and list(seen["consts"]) == consts
    xd, wd = seen["args"][:2]
    assert isinstance(xd, TmaArg) and isinstance(wd, TmaArg)
    assert xd.base is xq and xd.block_shape == (32, 256) and xd.shape == (m, k)
    assert wd.base is upper and wd.block_shape == (64, 256) and wd.shape == (n, k)
    assert wd.view == (torch.float8_e4m3fn if plane == torch.uint8 else None)
    assert seen["args"][runtime.index("w_scale")] == 2.0 ** (-8 + 2)
    assert seen["grid"] == -(-n // 64) * -(-m // 32) * split
    assert seen["consts"]["SPLIT_K"] == split and seen["num_warps"] == 4 and seen["num_stages"] == 1
    assert seen["consts"]["PDL"] == seen["pdl"] == (split == 2)  # the kernel's waits match the launch


# ---------------------------------------------------------------------------------------------- GPU


@needs_hopper
@pytest.mark.parametrize("tile", TILES, ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_reference(m, n, k, tile):
    nw, x, xq, xs, mode = _case((m, n, k))
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, out=out, tile=tile)
    assert rel_err(out, _product(xq, xs, nw)) < 2e-3  # the same codes: GEMM rounding only
    assert rel_err(out, nested_linear(x, nw, "fp8")) < FP8_TOL  # the op's reference (torch's quantization)


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_prescale_and_bf16(dtype):
    n = SHAPES[3][1]
    nw, x, xq, xs, mode = _case(SHAPES[3], amax=5.0, dtype=dtype)
    assert nw.scale_exp > 0
    bias = torch.randn(n, device="cuda").to(dtype)
    y = G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, bias, out_dtype=dtype)
    assert y.dtype == dtype
    tol = 4 * FP8_TOL if dtype == torch.bfloat16 else FP8_TOL
    assert rel_err(y, _product(xq, xs, nw, bias, dtype)) < (8e-3 if dtype == torch.bfloat16 else 2e-3)
    assert rel_err(y, nested_linear(x, nw, "fp8", bias)) < tol


@needs_hopper
def test_plane_as_bytes_gives_the_same_result():
    nw, _, xq, xs, mode = _case(SHAPES[2])
    a = G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0)
    b = G.nested_fp8_gemm_rs(xq, xs, nw.upper.view(torch.uint8), mode, 0)
    assert torch.equal(a, b)


@needs_hopper
def test_close_to_the_triton_fp8_kernel():
    """Not bit for bit (another accumulation order), but the same epilogue on the same codes."""
    from kernels.triton_fp8 import nested_fp8_gemm

    n = SHAPES[4][1]
    nw, x, xq, xs, mode = _case(SHAPES[4])
    bias = torch.randn(n, device="cuda").half()
    a = G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, bias, tile=(64, 64, 128, 8))
    b = nested_fp8_gemm(x, nw.upper, mode, nw.scale_exp, bias, quantized=(xq, xs))
    assert rel_err(a, b) < 2e-3


@needs_hopper
@pytest.mark.parametrize("split", [2, 4])
def test_split_k_writes_every_partial_and_resets_its_counters(split):
    from kernels import split_k
    from kernels.tuning import TileConfig
    from tests.kernel_helpers import poison_split_k_workspace, split_k_partials_written

    m, n, _ = SHAPES[1]
    tile = (64, 16, 128, 8)
    nw, _, xq, xs, mode = _case(SHAPES[1])
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, tile=tile, split_k=split)  # makes the buffers
    poison_split_k_workspace(xq.device)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, out=out, tile=tile, split_k=split)
    torch.cuda.synchronize()
    assert split_k_partials_written(xq.device, m, n, TileConfig(64, 16, 128, split_k=split))
    assert not split_k.semaphores(xq.device).any(), "a split-K launch left a counter set"
    assert torch.equal(out, G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, tile=tile, split_k=split))
    assert rel_err(out, G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, tile=tile)) < 2e-3


@needs_hopper
def test_fp16_mode_leaves_the_output_untouched():
    from kernels.ops import new_mode_tensor

    m, n, _ = SHAPES[1]
    nw, _, xq, xs, _ = _case(SHAPES[1])
    for split in (1, 2):
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
        G.nested_fp8_gemm_rs(xq, xs, nw.upper, new_mode_tensor("cuda", "fp16"), 0, out=out, split_k=split)
        assert torch.isnan(out).all()


@needs_hopper
def test_cuda_graph_replay_follows_mode_flips():
    from kernels.ops import set_host_mode

    nw, _, xq, xs, mode = _case(SHAPES[2])
    eager = G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, tile=(64, 16, 256, 10))
    out = torch.empty_like(eager)
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, out=out, tile=(64, 16, 256, 10))  # compiled, direct path
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, out=out, tile=(64, 16, 256, 10))
    for flip in ("fp16", "fp8", "fp16", "fp8"):
        set_host_mode(mode, flip)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        if flip == "fp8":
            assert torch.equal(out, eager)
        else:
            assert torch.isnan(out).all()


@needs_hopper
@pytest.mark.parametrize("split", [1, 2])
def test_pdl_launch_reads_the_codes_the_launch_before_wrote(split):
    """Launched as a programmatic dependent of ``act_quant`` (captured in a graph, as the op runs it), the
    GEMM starts before the quantization ends; it must still read this replay's codes and scales: they
    are poisoned before each replay and x changes between replays. In FP16 mode it writes nothing."""
    from kernels.ops import set_host_mode
    from kernels.triton_fp8 import act_quant

    nw, x, xq, xs, mode = _case((64, 3024, 8192))  # a long K: the quantization takes a while
    out = torch.empty(64, 3024, dtype=torch.float16, device="cuda")

    def op():
        act_quant(x, mode, (xq, xs))
        G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, 0, out=out, tile=(64, 64, 256, 5), split_k=split, pdl=True)

    op()  # compiled, direct path, split-K buffers
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        op()
    for step in range(3):
        x.copy_(torch.randn_like(x))
        want = _product(*act_quant(x, mode), nw)
        xq.zero_()
        xs.fill_(float("nan"))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, G.nested_fp8_gemm_rs(*act_quant(x, mode), nw.upper, mode, 0, tile=(64, 64, 256, 5),
                                                     split_k=split)), step
        assert (out.float() - want.float()).norm() / want.float().norm() < 5e-3
    set_host_mode(mode, "fp16")
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.isnan(out).all()
    set_host_mode(mode, "fp8")

