"""The Gluon NestedFP16 GEMM (``kernels.gluon_fp16``) and how the dispatcher picks it.

On a Hopper GPU with a Triton that has Gluon: the kernel against ``kernels.reference`` on ragged
shapes (output poisoned with NaN, so an unwritten tile fails), bf16 + bias + pre-scale, the
device-side mode, and the op choosing it. Everywhere else (CPU CI) those skip; what runs there is
the tile table lookup, the config checks, that the module imports without a GPU and refuses to
run with a clear error, and that the dispatcher keeps CPU tensors on the Triton path.
"""

from __future__ import annotations

import json

import pytest
import torch

from kernels import gluon_fp16 as G
from kernels import nested_linear, triton_dispatch, tuning
from tests.kernel_helpers import hopper_gluon_problem, nested_weights, rel_err

needs_hopper = pytest.mark.skipif(hopper_gluon_problem() is not None, reason=str(hopper_gluon_problem()))

# (M, N, K): M ragged against block_t, N against block_w, K against block_k, rings that wrap.
SHAPES = [(100, 384, 2048), (33, 200, 528), (7, 4096, 1024)]
TILES = [(128, 128, 64, 4), (64, 16, 128, 5), (64, 256, 64, 3)]


def test_config_checks_refuse_tiles_that_cannot_fit():
    assert G.config_problem(128, 128, 64, 4) is None
    assert "shared memory" in G.config_problem(128, 256, 128, 4)
    assert "block_w" in G.config_problem(32, 64, 64, 4)
    assert "block_t" in G.config_problem(64, 48, 64, 4)
    assert G.smem_bytes(128, 256, 64, 4) <= G.SMEM_LIMIT


def test_tile_table_lookup_takes_the_next_measured_m_and_caps_the_token_tile():
    table = tuning._gluon_table()
    assert "6144x4096" in table, "the committed H200 table holds the Llama-3.1-8B shapes"
    entries = table["6144x4096"]
    assert tuning.gluon_tile(6144, 4096, 64) == tuple(entries["64"])
    assert tuning.gluon_tile(6144, 4096, 65) == tuple(entries["128"])  # next measured M up
    assert tuning.gluon_tile(6144, 4096, 10**6) == tuple(entries[max(entries, key=int)])
    for m in (17, 33, 100, 300):
        tile = tuning.gluon_tile(1000, 1000, m)  # not in the table: the heuristic
        assert G.config_problem(*tile) is None
        assert tile[1] <= max(16, 1 << (m - 1).bit_length())


def test_table_keeps_the_triton_kernel_where_it_measured_faster(monkeypatch):
    """A null entry (the Triton kernel won there) makes the op launch the Triton kernel; a split-K entry
    keeps its split when the token tile is capped."""
    monkeypatch.setattr(tuning, "_gluon_table", lambda: {"256x512": {"1": None, "64": [64, 64, 128, 5, 2]}})
    tuning.gluon_tile.cache_clear()
    try:
        assert tuning.gluon_tile(256, 512, 1) is None
        assert tuning.gluon_tile(256, 512, 64) == (64, 64, 128, 5, 2)
        assert tuning.gluon_tile(256, 512, 20) == (64, 32, 128, 5, 2)
    finally:
        tuning.gluon_tile.cache_clear()


def test_table_update_replaces_only_the_swept_entries(tmp_path):
    out = tmp_path / "table.json"
    out.write_text(json.dumps(dict(tiles={"256x512": {"16": [64, 16, 128, 5], "4096": [128, 256, 64, 3]}})))
    rows = [dict(shape="s", n=256, k=512, m=16, best_cfg=[64, 16, 128, 5, 2], shipped_us=10.0, best_us=9.0,
                 shipped_gluon=[64, 16, 128, 5])]
    table = tuning.write_gluon_table(_check_json(tmp_path, rows), str(out), update=True)
    assert table["tiles"]["256x512"] == {"16": [64, 16, 128, 5, 2], "4096": [128, 256, 64, 3]}
    assert table["command"].endswith("--update")


def _check_json(tmp_path, rows: list[dict]) -> str:
    path = tmp_path / "check.json"
    path.write_text(json.dumps(dict(meta=dict(device="H200", date="d", triton="3.6.0"), rows=rows)))
    return str(path)


def test_table_writer_puts_the_triton_kernel_only_where_it_shipped_and_won(tmp_path):
    row = dict(shape="s", n=256, k=512, best_cfg=[64, 16, 128, 5])
    rows = [
        dict(row, m=1, shipped_us=10.0, best_us=11.0, shipped_gluon=None),  # Triton shipped and won
        dict(row, m=16, shipped_us=10.0, best_us=9.0, shipped_gluon=None),  # Gluon beat Triton
        # The shipped op ran Gluon (an older tile): its time is no Triton time, so Gluon stays.
        dict(row, m=64, shipped_us=10.0, best_us=11.0, shipped_gluon=[64, 64, 128, 5]),
    ]
    out = tmp_path / "table.json"
    table = tuning.write_gluon_table(_check_json(tmp_path, rows), str(out))
    assert table["tiles"]["256x512"] == {"1": None, "16": [64, 16, 128, 5], "64": [64, 16, 128, 5]}
    assert json.loads(out.read_text())["tiles"] == table["tiles"]


def test_table_records_from_which_m_merge_and_cublas_beat_the_gluon_kernel(tmp_path):
    """``merge_from``: the smallest timed M from which merge + cuBLAS won at every larger timed M (a win
    between Gluon wins does not count); past the largest timed M where Gluon won there; kept on --update
    for shapes the run did not time."""
    row = dict(shape="s", k=512, best_cfg=[128, 256, 64, 4], shipped_us=9.0, shipped_gluon=[128, 256, 64, 4])
    rows = [dict(row, n=256, m=512, merge_cublas_us=9.0, best_us=10.0),  # merge won, then lost at 1024
            dict(row, n=256, m=1024, merge_cublas_us=11.0, best_us=10.0),
            dict(row, n=256, m=4096, merge_cublas_us=9.0, best_us=10.0),
            dict(row, n=512, m=512, merge_cublas_us=11.0, best_us=10.0),
            dict(row, n=512, m=4096, merge_cublas_us=11.0, best_us=10.0)]
    out = tmp_path / "table.json"
    table = tuning.write_gluon_table(_check_json(tmp_path, rows), str(out))
    assert table["merge_from"] == {"256x512": 4096, "512x512": 4097}
    out.write_text(json.dumps(dict(tiles={}, merge_from={"1024x512": 2048, "256x512": 512})))
    table = tuning.write_gluon_table(_check_json(tmp_path, rows[:3]), str(out), update=True)
    assert table["merge_from"] == {"1024x512": 2048, "256x512": 4096}


@pytest.mark.parametrize("m,table_m,gluon,merge", [
    (512, 4096, True, False),  # below LARGE_M_THRESHOLD: never
    (2048, 4096, True, False),  # the table measured the Gluon kernel faster here
    (4096, 4096, True, True),
    (2048, 4096, False, True),  # no Gluon kernel for this call: the Triton kernel lost to merge + cuBLAS
    (2048, None, True, True),  # a shape the table lacks: merge + cuBLAS from the threshold, as before
])
def test_eager_fp16_at_large_m_takes_merge_and_cublas_from_the_tables_m(monkeypatch, m, table_m, gluon, merge):
    monkeypatch.setattr(triton_dispatch, "merge_from", lambda n, k: table_m)
    monkeypatch.setattr(triton_dispatch, "use_gluon", lambda x, u, lo: (128, 256, 64, 4) if gluon else None)
    x = torch.empty(m, 64, dtype=torch.float16)
    assert triton_dispatch.fp16_on_cublas(x, torch.empty(128, 64, dtype=torch.uint8), None) is merge


def test_committed_table_merges_from_a_measured_m_for_every_shape():
    table = json.loads(tuning.GLUON_TABLE_PATH.read_text())
    for shape, entries in table["tiles"].items():
        start = table["merge_from"][shape]
        assert str(start) in entries or start == max(map(int, entries)) + 1, (shape, start)


def test_every_table_tile_is_a_valid_config():
    for shape, entries in tuning._gluon_table().items():
        for m, tile in entries.items():
            assert tile is None or G.config_problem(*tile[:4]) is None, (shape, m, tile)


def test_dispatcher_keeps_cpu_tensors_on_the_triton_path():
    nw = nested_weights(64, 64, device="cpu")
    x = torch.randn(64, 64).half()
    assert not triton_dispatch.use_gluon(x, nw.upper, nw.lower)


def test_refuses_to_run_off_hopper_with_a_clear_error():
    if hopper_gluon_problem() is None:
        pytest.skip("this machine can run the kernel")
    nw = nested_weights(64, 64, device="cpu")
    mode = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(G.GluonUnavailable):
        G.nested_fp16_gemm_rs(torch.randn(4, 64).half(), nw.upper, nw.lower, mode, 0)


@needs_hopper
@pytest.mark.parametrize("tile", TILES, ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_reference_at_fp16_gemm_error(m, n, k, tile):
    from kernels.ops import new_mode_tensor

    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, new_mode_tensor("cuda", "fp16"), nw.scale_exp, out=out, tile=tile)
    assert rel_err(out, nested_linear(x, nw, "fp16")) < 2e-3


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_prescale_and_bf16(dtype):
    from kernels.ops import new_mode_tensor

    m, n, k = SHAPES[0]
    nw = nested_weights(n, k, amax=5.0)
    assert nw.scale_exp > 0
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    y = G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, new_mode_tensor("cuda", "fp16"), nw.scale_exp, bias)
    assert y.dtype == dtype
    assert rel_err(y, nested_linear(x, nw, "fp16", bias)) < (8e-3 if dtype == torch.bfloat16 else 2e-3)


@needs_hopper
def test_fp8_mode_leaves_the_output_untouched():
    from kernels.ops import new_mode_tensor

    m, n, k = SHAPES[1]
    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, new_mode_tensor("cuda", "fp8"), nw.scale_exp, out=out)
    assert torch.isnan(out).all()


@needs_hopper
@pytest.mark.parametrize("m,k", [(64, 1024), (300, 4000)])
def test_fp8_mode_quantizes_x_exactly_as_act_quant(m, k):
    from kernels.ops import new_mode_tensor
    from kernels.triton_fp8 import act_quant

    nw = nested_weights(256, k)
    x = torch.randn(m, k, device="cuda").half() * 3
    x[1, :] = 0  # an all-zero row: the minimum scale
    mode = new_mode_tensor("cuda", "fp8")
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device="cuda")
    s = torch.full((m,), float("nan"), device="cuda")
    G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, 0, tile=(64, 64, 64, 4), quant_out=(q, s))
    q_ref, s_ref = act_quant(x, mode)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@needs_hopper
@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_op_takes_the_gluon_kernel_where_the_table_says_and_matches_both_modes(mode):
    from kernels.ops import new_mode_tensor

    m, n, k = 64, 6144, 1024  # no table entry for this (N, K): the heuristic picks Gluon at M = 64
    nw = nested_weights(n, k)
    x = torch.randn(m, k, device="cuda").half()
    assert triton_dispatch.use_gluon(x, nw.upper, nw.lower)
    y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, new_mode_tensor("cuda", mode), nw.scale_exp)
    assert rel_err(y, nested_linear(x, nw, mode)) < (2e-3 if mode == "fp16" else 5e-3)


@needs_hopper
@pytest.mark.parametrize("split", [2, 4])
def test_split_k_sums_every_slice_and_resets_its_counters(split):
    """Split-K programs per tile each take a slice of K (uneven when the steps do not divide); the last
    to arrive writes the tile and leaves the counters at zero for the next launch."""
    from kernels import split_k
    from kernels.ops import new_mode_tensor

    split_k.reserve(torch.device("cuda"))
    nw = nested_weights(1000, 1040)  # 1040 / 64 = 16.25: a ragged last step
    x = torch.randn(33, 1040, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp16")
    for _ in range(2):
        out = torch.full((33, 1000), float("nan"), device="cuda", dtype=torch.float16)
        G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, out=out, tile=(64, 64, 64, 4, split))
        torch.cuda.synchronize()
        assert rel_err(out, nested_linear(x, nw, "fp16")) < 2e-3
        assert int(split_k.semaphores(torch.device("cuda")).abs().sum()) == 0


@needs_hopper
@pytest.mark.parametrize("m,n,k,tile", [
    (33, 1000, 1040, (64, 64, 64, 4, tuning.STREAM_K)),  # 16 tiles x 17 steps on all SMs: ~2 steps a program
    (300, 3000, 2048, (128, 256, 64, 3, tuning.STREAM_K)),  # 48 tiles of 32 steps: pieces of 1-2 tiles
    (7, 200, 64, (64, 16, 64, 4, tuning.STREAM_K)),  # 4 steps in all: 4 programs, each one whole tile
])
def test_stream_k_sums_every_piece_and_resets_its_counters(m, n, k, tile):
    """Stream-K: one program per SM over all tiles' K steps; tiles split between programs are summed by
    the last to arrive, which leaves the counters at zero for the next launch (and graph replay)."""
    from kernels import split_k
    from kernels.ops import new_mode_tensor

    split_k.reserve(torch.device("cuda"))
    assert G.programs(tile, m, n, k, torch.device("cuda")) == min(split_k.sm_count(torch.device("cuda")),
                                                                  -(-n // tile[0]) * -(-m // tile[1]) * -(-k // 64))
    nw = nested_weights(n, k, amax=5.0)
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    mode = new_mode_tensor("cuda", "fp16")
    ref = nested_linear(x, nw, "fp16", bias)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    run = lambda: G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, bias, out, tile)  # noqa: E731
    for _ in range(2):
        out.fill_(float("nan"))
        run()
        torch.cuda.synchronize()
        assert rel_err(out, ref) < 8e-3
        assert int(split_k.semaphores(torch.device("cuda")).abs().sum()) == 0
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(2):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref) < 8e-3


@needs_hopper
def test_stream_k_launch_quantizes_x_in_fp8_mode():
    """In FP8 mode a stream-K launch (one program per SM) quantizes every row, as the other grids do."""
    from kernels.ops import new_mode_tensor
    from kernels.triton_fp8 import act_quant

    m, k = 300, 4000
    nw = nested_weights(256, k)
    x = torch.randn(m, k, device="cuda").half() * 3
    mode = new_mode_tensor("cuda", "fp8")
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device="cuda")
    s = torch.full((m,), float("nan"), device="cuda")
    G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, 0, tile=(64, 64, 64, 4, tuning.STREAM_K), quant_out=(q, s))
    q_ref, s_ref = act_quant(x, mode)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_table_update_keeps_a_timed_tile_unless_beaten_by_the_margin(tmp_path):
    """Re-sweeps move the big GEMMs' times by a few percent, so a committed tile yields only to a clear win."""
    out = tmp_path / "table.json"
    incumbent = [64, 64, 128, 5]
    out.write_text(json.dumps(dict(tiles={"256x512": {"64": incumbent, "128": incumbent, "256": incumbent}})))
    within, beyond = 100.0 * (1 - tuning.INCUMBENT_MARGIN / 2), 100.0 * (1 - 2 * tuning.INCUMBENT_MARGIN)
    row = dict(shape="s", n=256, k=512, best_cfg=[64, 64, 128, 7], shipped_us=100.0, shipped_gluon=incumbent)
    rows = [dict(row, m=64, best_us=within, configs=[dict(cfg=incumbent, us=100.0), dict(cfg=[64, 64, 128, 7],
                                                                                      us=within)]),
            dict(row, m=128, best_us=beyond, configs=[dict(cfg=incumbent, us=100.0), dict(cfg=[64, 64, 128, 7],
                                                                                       us=beyond)]),
            dict(row, m=256, best_us=within, configs=[dict(cfg=[64, 64, 128, 7], us=within)])]  # not timed
    table = tuning.write_gluon_table(_check_json(tmp_path, rows), str(out), update=True)
    assert table["tiles"]["256x512"] == {"64": incumbent, "128": [64, 64, 128, 7], "256": [64, 64, 128, 7]}
