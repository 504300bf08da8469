"""The NestedFP Triton kernels, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1).

Small shapes, ragged on purpose (M = 1, 7, 33; N and K not multiples of the tiles), fresh random
inputs on every run, outputs poisoned with NaN so an unwritten tile fails. The H200 checks every
benchmark shape again on the GPU (``python -m kernels.bench``), where the merge runs as PTX.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is decorated

import pytest
import torch

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET is set to something other than 1", allow_module_level=True)


def _interpreted_modules():
    """Our kernel modules with interpreted kernels (reloaded if another test imported any of them first).

    Reloaded in import-dependency order: a module that imports another's jit helpers must be
    reloaded after it, or it keeps the non-interpreted helpers. Any one of them may have been
    imported without the interpreter (e.g. ``kernels.split_k`` by ``kernels.gluon_fp8``) while the
    others were not, so each is checked.
    """
    from triton.runtime.interpreter import InterpretedFunction

    names = ["kernels.tuning", "kernels.split_k", "kernels.triton_fp8", "kernels.triton_fp16", "kernels.triton_merge",
             "kernels.triton_dispatch", "kernels.silu_mul_codes", "kernels.rms_norm_codes"]
    jitted = {"kernels.split_k": "split_ids", "kernels.triton_fp8": "quantize_rows",
              "kernels.triton_fp16": "nested_fp16_kernel", "kernels.triton_merge": "merge_kernel",
              "kernels.silu_mul_codes": "silu_mul_codes_kernel", "kernels.rms_norm_codes": "rms_norm_codes_kernel"}
    mods = {n: importlib.import_module(n) for n in names}
    if not all(isinstance(getattr(mods[n], f), InterpretedFunction) for n, f in jitted.items()):
        mods = {n: importlib.reload(mods[n]) for n in names}
    if not isinstance(mods["kernels.triton_fp16"].nested_fp16_kernel, InterpretedFunction):
        pytest.skip("Triton kernels were decorated without the interpreter", allow_module_level=True)
    return [mods[n] for n in ("kernels.tuning", "kernels.triton_fp16", "kernels.triton_fp8", "kernels.triton_merge",
                              "kernels.triton_dispatch", "kernels.silu_mul_codes", "kernels.rms_norm_codes")]


tuning, tfp16, tfp8, tmerge, dispatch, smc, rnc = _interpreted_modules()

from kernels import NestedWeight, nested_linear, nested_merge, nested_split  # noqa: E402
from kernels.ops import host_mode, new_mode_tensor, set_host_mode  # noqa: E402
from kernels.reference import (  # noqa: E402
    quantize_per_token,
    rms_norm_codes_reference,
    silu_mul_codes_reference,
    ulps_apart,
)
from tests.kernel_helpers import (  # noqa: E402
    poison_split_k_workspace,
    poisoned_codes_outputs,
    rel_err,
    split_k_partials_written,
)

TileConfig = tuning.TileConfig
FP16_TOL = 2e-3  # an fp16 GEMM with fp32 accumulation lands near 5e-4 (output rounding)
FP8_TOL = 2e-3  # same quantization as the reference: only summation order and output rounding differ

# Small tiles so the interpreter is quick and every shape spans several ragged tiles.
SMALL_FP16 = [
    TileConfig(32, 16, 32, num_warps=4, num_stages=2, group=2),
    TileConfig(16, 32, 64, num_warps=4, num_stages=2, group=1, swap_ab=False),
    TileConfig(16, 16, 32, num_warps=4, num_stages=2, group=2, split_k=3),
    TileConfig(16, 32, 32, num_warps=4, num_stages=2, group=1, swap_ab=False, split_k=4),
]
SMALL_FP8 = [
    TileConfig(32, 16, 64, num_warps=4, num_stages=2, group=2),
    TileConfig(16, 16, 32, num_warps=4, num_stages=2, group=1, fused_quant=True),
    TileConfig(16, 16, 32, num_warps=4, num_stages=2, group=2, split_k=4),
    TileConfig(16, 16, 32, num_warps=4, num_stages=2, group=1, fused_quant=True, split_k=2),
]
SHAPES = [(1, 48, 80), (7, 96, 136), (33, 72, 200)]  # (M, N, K): none a multiple of the tiles


def _weights(n: int, k: int, amax: float = 0.5) -> NestedWeight:
    """Random FP16 weights; magnitudes kept >= 1e-2 so that a pre-scale stays exact."""
    mag = torch.empty(n, k).uniform_(1e-2, 1.0) ** 2 * amax
    return nested_split((mag * torch.randn(n, k).sign()).half())


def _poisoned(m: int, n: int, dtype=torch.float16) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=dtype)


def _merge_asm_emulated(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """The PTX block of triton_fp16._MERGE_ASM, instruction by instruction, on 32-bit words."""
    u8, l8 = upper.view(torch.uint8).flatten(), lower.flatten()
    pad = (-u8.numel()) % 4
    u8 = torch.cat([u8, u8.new_zeros(pad)]).view(-1, 4).to(torch.int64)
    l8 = torch.cat([l8, l8.new_zeros(pad)]).view(-1, 4).to(torch.int64)
    lanes = torch.tensor([0, 8, 16, 24])
    u = (u8 << lanes).sum(1)  # the register the asm sees: 4 upper bytes
    lo = (l8 << lanes).sum(1)
    c = (u ^ (lo >> 7)) & 0x01010101  # shr + lop3 0x28: (a ^ b) & c
    t = (u - c) & 0xFFFFFFFF
    h = (t & 0x80808080) | ((t >> 1) & 0x3F3F3F3F)  # shr, and, lop3 0xEA: (a & b) | c
    byte = lambda v, i: (v >> (8 * i)) & 0xFF  # noqa: E731
    # prmt 0x5140 / 0x7362: FP16 j = (h_j << 8) | l_j
    halves = torch.stack([(byte(h, j) << 8) | byte(lo, j) for j in range(4)], 1).flatten()
    return halves[: upper.numel()].to(torch.int32).to(torch.int16).view(upper.shape)


def test_merge_asm_algorithm_is_bit_exact_for_every_in_range_fp16():
    """The packed-byte merge that runs as PTX on the GPU rebuilds every in-range FP16 pattern."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    w = bits.view(torch.float16)
    w = w[torch.isfinite(w) & (w.abs() < 1.875)]
    w = w[torch.randperm(w.numel())].reshape(-1, 2)  # fresh lane assignment on every run
    nw = nested_split(w)
    assert nw.scale_exp == 0
    got = _merge_asm_emulated(nw.upper, nw.lower)
    assert torch.equal(got, w.view(torch.int16))
    assert torch.equal(got, nested_merge(nw).view(torch.int16))


@pytest.mark.parametrize("cfg", SMALL_FP16, ids=["swap_ab", "w_in_smem", "swap_ab_split_k", "w_in_smem_split_k"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_fp16_kernel_matches_reference_at_fp16_gemm_error(m, n, k, cfg):
    nw = _weights(n, k)
    x = torch.randn(m, k).half()
    out = tfp16.nested_fp16_gemm(x, nw.upper, nw.lower, new_mode_tensor("cpu", "fp16"), nw.scale_exp,
                                 out=_poisoned(m, n), config=cfg)
    ref = nested_linear(x, nw, "fp16")
    exact = x.double() @ nested_merge(nw).double().t()
    assert rel_err(out, ref) < FP16_TOL
    assert rel_err(out, exact) < FP16_TOL


@pytest.mark.parametrize("cfg", SMALL_FP8, ids=["act_quant_kernel", "fused_quant", "split_k", "fused_quant_split_k"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_fp8_kernel_matches_fp8_reference(m, n, k, cfg):
    nw = _weights(n, k)
    x = torch.randn(m, k).half() * 3
    out = tfp8.nested_fp8_gemm(x, nw.upper, new_mode_tensor("cpu", "fp8"), nw.scale_exp,
                               out=_poisoned(m, n), config=cfg)
    assert rel_err(out, nested_linear(x, nw, "fp8")) < FP8_TOL


def test_split_k_writes_every_partial_sums_them_and_resets_its_semaphores():
    """Split-K (more programs than tiles, the last to arrive sums the partials): every program writes
    its partial, the sum equals one program per tile up to summation order, and the counters are
    back at zero for the next launch. (Here programs run one after another; the GPU test races them.)"""
    from kernels import split_k

    nw = _weights(72, 200)  # K = 200: 7 steps of 32 over 3 or 4 splits, uneven
    x = torch.randn(7, 200).half()
    mode16, mode8 = new_mode_tensor("cpu", "fp16"), new_mode_tensor("cpu", "fp8")
    for kind, cfg in (("fp16", SMALL_FP16[2]), ("fp8", SMALL_FP8[2])):
        def run(c):
            poison_split_k_workspace(x.device)
            if kind == "fp16":
                return tfp16.nested_fp16_gemm(x, nw.upper, nw.lower, mode16, 0, out=_poisoned(7, 72), config=c)
            return tfp8.nested_fp8_gemm(x, nw.upper, mode8, 0, out=_poisoned(7, 72), config=c)

        split = run(cfg)
        assert split_k_partials_written(x.device, 7, 72, cfg), f"{kind}: a program did not write its partial"
        assert torch.equal(split, run(cfg))
        assert rel_err(split, run(dataclasses.replace(cfg, split_k=1))) < 1e-3
        assert not split_k.semaphores(x.device).any(), f"{kind}: a split-K launch left a counter set"


def test_split_k_buffers_grow_keep_outgrown_ones_alive_and_turn_off(monkeypatch):
    """A larger need replaces the buffers (old ones stay referenced: captured graphs may use them);
    NESTEDFP_SPLIT_K=0 (``ENABLED``) makes every launch run one program per tile."""
    from kernels import split_k

    monkeypatch.setattr(split_k, "_BUFFERS", {})
    monkeypatch.setattr(split_k, "_RETIRED", [])
    dev = torch.device("cpu")
    ws, sem = split_k.buffers(dev, 10, 100)
    assert split_k.buffers(dev, 10, 100)[0] is ws
    ws2, sem2 = split_k.buffers(dev, 10, ws.numel() + 1)
    assert ws2.numel() >= 2 * ws.numel() and not sem2.any()
    assert any(t is ws for t in split_k._RETIRED) and any(t is sem for t in split_k._RETIRED)

    monkeypatch.setattr(split_k, "ENABLED", False)
    assert split_k.buffers(dev, 1, 1) is None
    nw = _weights(72, 200)
    x = torch.randn(7, 200).half()
    ws2.fill_(float("nan"))
    out = tfp8.nested_fp8_gemm(x, nw.upper, new_mode_tensor("cpu", "fp8"), 0, out=_poisoned(7, 72), config=SMALL_FP8[2])
    assert torch.isnan(ws2).all(), "split-K ran although it is off"
    assert rel_err(out, nested_linear(x, nw, "fp8")) < FP8_TOL


@pytest.mark.parametrize(("m", "k"), [(5, 300), (5, tfp8.ONE_PASS_MAX_K + 40), (5, tfp8.ONE_PASS_LONG_MAX_K + 40),
                                      (tfp8.ONE_PASS_LONG_MAX_M + 1, tfp8.ONE_PASS_MAX_K + 40)])
def test_act_quant_kernel_equals_quantize_per_token(m, k):
    """Rows held in registers (one read: short rows, and long ones at small M; the fast division past
    FAST_DIV_FROM) or two passes (longer rows, and long ones at large M): the same scales and the same E4M3
    codes (round-to-nearest-even, the sign of -0 kept) as torch."""
    x = torch.randn(m, k).half() * torch.tensor([1e-3, 1.0, 30.0, 0.0, 1e4]).half().repeat(m)[:m, None]
    x[1, :7] = -0.0
    q, s = tfp8.act_quant(x, new_mode_tensor("cpu", "fp8"))
    rq, rs = quantize_per_token(x)
    assert torch.equal(s, rs.flatten())
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_prescaled_layer_multiplies_output_by_two_to_scale_exp(mode):
    nw = _weights(40, 96, amax=6.0)  # |w| >= 1.875 somewhere: a power-of-two pre-scale
    assert nw.scale_exp > 0
    x = torch.randn(7, 96).half()
    y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, new_mode_tensor("cpu", mode), nw.scale_exp)
    assert rel_err(y, nested_linear(x, nw, mode)) < (FP16_TOL if mode == "fp16" else FP8_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_dispatch_handles_batch_dims_bias_and_bf16(mode, dtype):
    if mode == "fp16" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bf16 tl.dot wrongly; the H200 bench checks this case")
    nw = _weights(56, 88)
    x = torch.randn(2, 5, 88).to(dtype)
    bias = torch.randn(56).to(dtype)
    y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, new_mode_tensor("cpu", mode), nw.scale_exp, bias)
    assert y.shape == (2, 5, 56) and y.dtype == dtype
    ref = nested_linear(x, nw, mode, bias)
    assert rel_err(y, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_mode_tensor_selects_the_path_at_run_time():
    """Each kernel reads the mode itself: the one not selected leaves its output untouched. (A mode
    tensor without a host mirror, written directly: the device-side pick, as in a CUDA graph.)"""
    nw = _weights(48, 72)
    x = torch.randn(7, 72).half()
    mode = torch.zeros(1, dtype=torch.int32)
    cfg16, cfg8 = SMALL_FP16[0], SMALL_FP8[0]
    for code, name in ((0, "fp16"), (1, "fp8"), (0, "fp16")):
        mode.fill_(code)
        out16 = tfp16.nested_fp16_gemm(x, nw.upper, nw.lower, mode, 0, out=_poisoned(7, 48), config=cfg16)
        out8 = tfp8.nested_fp8_gemm(x, nw.upper, mode, 0, out=_poisoned(7, 48), config=cfg8)
        ran, idle = (out16, out8) if name == "fp16" else (out8, out16)
        assert torch.isnan(idle).all(), f"the {name}-mode launch wrote through the other kernel"
        assert rel_err(ran, nested_linear(x, nw, name)) < 2e-3
        y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)  # its own tiles: another sum order
        assert rel_err(y, ran) < 1e-3
    diff = rel_err(dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode.fill_(1), 0), nested_linear(x, nw, "fp16"))
    assert diff > 1e-2, "fp8 mode should differ from fp16 by the quantization error"


def test_fp16_launch_quantizes_activations_in_fp8_mode():
    """In FP8 mode the dispatcher's FP16 launch does the per-token quantization, not the GEMM."""
    nw = _weights(40, 300)
    x = torch.randn(9, 300).half() * 2
    q = torch.zeros(9, 300, dtype=torch.float8_e4m3fn)
    s = torch.zeros(9)
    out = tfp16.nested_fp16_gemm(x, nw.upper, nw.lower, new_mode_tensor("cpu", "fp8"), 0, out=_poisoned(9, 40),
                                 config=SMALL_FP16[0], quant_out=(q, s))
    assert torch.isnan(out).all()
    rq, rs = quantize_per_token(x)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs.flatten())


def test_rejects_fp32_activations_with_a_clear_error():
    nw = _weights(16, 32)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        dispatch.nested_linear_cuda(torch.randn(2, 32), nw.upper, nw.lower, new_mode_tensor("cpu"), 0)


def test_empty_batch_returns_empty_output():
    nw = _weights(16, 32)
    y = dispatch.nested_linear_cuda(torch.randn(0, 32).half(), nw.upper, nw.lower, new_mode_tensor("cpu"), 0)
    assert y.shape == (0, 16)


def test_config_lookup_uses_table_then_heuristic():
    table = tuning._table()
    for kind, shapes in table.items():
        for nk, buckets in shapes.items():
            n, k = map(int, nk.split("x"))
            for b, d in buckets.items():
                cfg = tuning.get_config(kind, n, k, int(b))
                assert cfg.block_n == d["block_n"] and cfg.block_k == d["block_k"]
    cfg = tuning.get_config("fp16", 12345, 678, 3)  # a shape no table holds
    assert cfg == tuning.heuristic_config("fp16", 12345, 678, 3)
    assert cfg.block_m == 16  # decode: the narrowest token tile the MMA takes
    assert tuning.m_bucket(1) == 1 and tuning.m_bucket(2) == 16 and tuning.m_bucket(4097) == 8192
    assert tuning.m_bucket(10**6) == 8192
    # A table without a bucket for M takes the nearest one's entry (M = 1 without "1": the "16" entry).
    table16 = {"fp8": {"64x128": {"16": TileConfig(32, 16, 256).to_dict(), "1024": TileConfig(128, 128, 128).to_dict()}}}
    assert tuning.lookup(table16, "fp8", 64, 128, 1) == TileConfig(32, 16, 256)
    assert tuning.lookup(table16, "fp8", 64, 128, 2000) == TileConfig(128, 128, 128)
    assert tuning.lookup(table16, "fp16", 64, 128, 1) is None


@pytest.mark.parametrize("n,k,amax", [(37, 203, 0.5), (5, 4099, 6.0), (1, 1, 0.5)])
def test_merge_kernel_is_bit_exact_with_nested_merge(n, k, amax):
    """The one-pass merge (large-M FP16 path) rebuilds the planes' FP16 weight bit for bit."""
    nw = _weights(n, k, amax=amax)
    assert (nw.scale_exp > 0) == (amax > 1.875)
    ref = nested_merge(nw)
    got = tmerge.merge_weight(nw.upper, nw.lower, nw.scale_exp)
    assert torch.equal(got.view(torch.int16), ref.view(torch.int16))
    bf = tmerge.merge_weight(nw.upper, nw.lower, nw.scale_exp, torch.bfloat16)
    assert torch.equal(bf.view(torch.int16), ref.to(torch.bfloat16).view(torch.int16))


def test_host_mode_mirror_follows_set_host_mode_only_while_the_tensor_lives():
    mode = new_mode_tensor("cpu", "fp8")
    assert host_mode(mode) == "fp8" and host_mode(mode[:1]) == "fp8"
    assert set_host_mode(mode, "fp16") is mode and int(mode.item()) == 0 and host_mode(mode) == "fp16"
    assert host_mode(torch.zeros(1, dtype=torch.int32)) is None  # never registered: device read
    with pytest.raises(ValueError):
        set_host_mode(mode, "int4")
    ptr = mode.data_ptr()
    del mode
    other = torch.zeros(1, dtype=torch.int32)
    if other.data_ptr() == ptr:  # the address was reused: a dead entry must not answer
        assert host_mode(other) is None


@pytest.mark.parametrize("bias", [False, True])
def test_large_m_path_follows_the_mode_flipped_through_set_host_mode(monkeypatch, bias):
    """Eager M >= threshold: merge + F.linear in fp16 (= the reference exactly), FP8 GEMM alone in fp8
    (cuBLASLt is GPU-only: tests/test_host_fast_paths.py)."""
    monkeypatch.setattr(dispatch, "LARGE_M_THRESHOLD", 8)
    calls = []
    real16 = dispatch.nested_fp16_gemm
    monkeypatch.setattr(dispatch, "nested_fp16_gemm", lambda *a, **kw: calls.append("fused16") or real16(*a, **kw))
    nw = _weights(40, 72, amax=3.0)  # pre-scaled
    x = torch.randn(9, 72).half()
    b = torch.randn(40).half() if bias else None
    mode = new_mode_tensor("cpu", "fp8")
    for name in ("fp16", "fp8", "fp16"):
        set_host_mode(mode, name)
        y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp, b)
        ref = nested_linear(x, nw, name, b)
        if name == "fp16":
            assert torch.equal(y, ref)
        else:
            assert rel_err(y, ref) < FP8_TOL
    assert calls == [], "the large-M path launched the fused FP16 kernel"
    small = dispatch.nested_linear_cuda(x[:7], nw.upper, nw.lower, mode, nw.scale_exp, b)  # below: unchanged
    assert calls == ["fused16"] and rel_err(small, nested_linear(x[:7], nw, "fp16", b)) < FP16_TOL
    unregistered = torch.ones(1, dtype=torch.int32)  # no mirror: the device-side pick, both launches
    y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, unregistered, nw.scale_exp, b)
    assert calls == ["fused16", "fused16"] and rel_err(y, nested_linear(x, nw, "fp8", b)) < FP8_TOL


@pytest.mark.parametrize("host_pick", [True, False])
def test_eager_calls_with_a_mirror_launch_only_the_mirrored_precision(monkeypatch, host_pick):
    """Host pick: one precision's launches per eager call; device pick: both kernels, each reads the mode."""
    monkeypatch.setattr(dispatch, "HOST_PICK", host_pick)
    calls = []
    for fn in ("nested_fp16_gemm", "nested_fp8_gemm"):
        real = getattr(dispatch, fn)
        monkeypatch.setattr(dispatch, fn, lambda *a, _f=fn, _r=real, **kw: calls.append(_f) or _r(*a, **kw))
    nw = _weights(40, 72)
    x = torch.randn(5, 72).half()
    mode = new_mode_tensor("cpu", "fp16")
    for name, only in (("fp16", "nested_fp16_gemm"), ("fp8", "nested_fp8_gemm"), ("fp16", "nested_fp16_gemm")):
        set_host_mode(mode, name)
        calls.clear()
        y = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, nw.scale_exp)
        assert calls == ([only] if host_pick else ["nested_fp16_gemm", "nested_fp8_gemm"]), name
        assert rel_err(y, nested_linear(x, nw, name)) < (FP16_TOL if name == "fp16" else FP8_TOL)


@pytest.mark.parametrize("large_m", [False, True])
@pytest.mark.parametrize("host_pick", [True, False])
@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_given_codes_give_the_bits_of_the_op_that_quantizes_and_no_launch_quantizes(monkeypatch, mode, host_pick,
                                                                                      large_m):
    """``linear_prequantized``'s CUDA path on ``quantize_per_token``'s codes equals ``nested_linear_cuda`` bit
    for bit (its quantization is exact), and launches no quantization of its own (none in the FP16 launch)."""
    monkeypatch.setattr(dispatch, "HOST_PICK", host_pick)
    if large_m:
        monkeypatch.setattr(dispatch, "LARGE_M_THRESHOLD", 8)
    nw = _weights(40, 72, amax=3.0)  # pre-scaled
    x = torch.randn(9, 72).half()
    b = torch.randn(40).half()
    mode_t = new_mode_tensor("cpu", mode)
    want = dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode_t, nw.scale_exp, b)
    fp16_codes, fp8_codes = [], []  # what each launch was handed: codes to write, codes to read
    monkeypatch.setattr(dispatch, "act_quant", lambda *a, **kw: pytest.fail("act_quant launched on given codes"))
    real16, real8 = dispatch.nested_fp16_gemm, dispatch.nested_fp8_gemm
    monkeypatch.setattr(dispatch, "nested_fp16_gemm", lambda *a: fp16_codes.append(a[9]) or real16(*a))
    monkeypatch.setattr(dispatch, "nested_fp8_gemm", lambda *a: fp8_codes.append(a[8]) or real8(*a))
    q, s = quantize_per_token(x)
    got = dispatch.nested_linear_prequantized_cuda(x, q, s, nw.upper, nw.lower, mode_t, nw.scale_exp, b)
    assert torch.equal(got, want)
    assert fp16_codes or fp8_codes or (host_pick and large_m and mode == "fp16")  # that one is merge + F.linear
    assert all(c is None for c in fp16_codes)
    assert all(c is not None and c[0].data_ptr() == q.data_ptr() for c in fp8_codes)
    assert len(fp8_codes) == (0 if host_pick and mode == "fp16" else 1)


def test_given_codes_of_the_wrong_shape_or_dtype_are_refused_with_a_clear_error():
    nw = _weights(16, 32)
    x = torch.randn(3, 32).half()
    q, s = quantize_per_token(x)
    m = new_mode_tensor("cpu", "fp8")
    with pytest.raises(ValueError, match="x_fp8"):
        dispatch.nested_linear_prequantized_cuda(x, q[:2], s, nw.upper, nw.lower, m, 0)
    with pytest.raises(ValueError, match="x_fp8"):
        dispatch.nested_linear_prequantized_cuda(x, q.view(torch.uint8), s, nw.upper, nw.lower, m, 0)
    with pytest.raises(ValueError, match="x_scale"):
        dispatch.nested_linear_prequantized_cuda(x, q, s[:2], nw.upper, nw.lower, m, 0)
    with pytest.raises(ValueError, match="x_scale"):
        dispatch.nested_linear_prequantized_cuda(x, q, s.half(), nw.upper, nw.lower, m, 0)


def test_cuda_impl_registers_whichever_module_is_imported_first():
    """The dispatcher reads the mirror from kernels.mode_state, not kernels.ops: no import cycle
    (ops registers the dispatcher on import and would silently skip it on an ImportError)."""
    code = ("from kernels import triton_dispatch; import kernels.ops, torch; "
            "assert torch._C._dispatch_has_kernel_for_dispatch_key('nestedfp::linear', 'CUDA'); "
            "assert torch._C._dispatch_has_kernel_for_dispatch_key('nestedfp::linear_prequantized', 'CUDA')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_warm_up_runs_every_boundary_m_in_both_modes_both_picks_and_both_ops_once(monkeypatch):
    """The warm-up launches what serving would (host pick and device pick, fp16 and fp8, x quantized by
    the op or given as codes), on its own mode tensor, once per shape."""
    from kernels import warmup

    monkeypatch.setattr(warmup, "_warmed", set())
    seen = []
    real = dispatch.nested_linear_picked

    def spy(x, u, lo, mode, se, b, hp, quant=None):
        if quant is not None:  # the codes linear_prequantized would be given
            q, s = quantize_per_token(x)
            assert torch.equal(quant[0].view(torch.uint8), q.view(torch.uint8)) and torch.equal(quant[1], s.view(-1))
        seen.append((x.shape[0], host_mode(mode), hp, quant is not None))
        return real(x, u, lo, mode, se, b, hp, quant)

    monkeypatch.setattr(dispatch, "nested_linear_picked", spy)
    nw = _weights(24, 48)
    assert warmup.warm_ms(20) == [1, 16, 17, 20]
    assert warmup.warm_layer(nw.upper, nw.lower, nw.scale_exp, None, max_m=20)
    expected = [(m, md, hp, pq) for m in (1, 16, 17, 20) for md in ("fp16", "fp8") for hp in (True, False)
                for pq in (False, True)]
    assert sorted(seen) == sorted(expected)
    assert not warmup.warm_layer(nw.upper, nw.lower, nw.scale_exp, None, max_m=20), "once per shape"


@pytest.mark.parametrize("m, d", [(1, 7), (5, 40), (3, smc.CHUNK + 13)])  # the last spans a ragged second step
def test_silu_mul_codes_writes_x_in_fp16_mode_and_only_the_codes_in_fp8_mode(m, d):
    """x = silu(gate) * up rounded once from fp32 in FP16 mode; in FP8 mode the codes and scales of that x,
    bit for bit ``quantize_per_token``'s. Each mode leaves the other's outputs as it found them (poisoned)."""
    g = (torch.randn(m, 2 * d) * 4).half()
    mode = new_mode_tensor("cpu")
    got = {}
    for name in ("fp16", "fp8"):
        set_host_mode(mode, name)
        x, q, s = poisoned_codes_outputs(m, d)
        smc.silu_mul_codes_kernel[(m,)](g, x, q.view(torch.float8_e4m3fn), s, mode, m, d, g.stride(0),
                                        CHUNK=smc.CHUNK, INTERPRET=True)
        got[name] = x, q, s
    x, q16, s16 = got["fp16"]
    x8, q, s = got["fp8"]
    rx = silu_mul_codes_reference(g)[0]
    assert ulps_apart(x, rx) <= 1  # exp's last bit may differ
    rq, rs = quantize_per_token(x)
    assert torch.equal(q, rq.view(torch.uint8)) and torch.equal(s, rs)
    assert (q16 == 0x7F).all() and s16.isnan().all()  # FP16 mode wrote no codes ...
    assert x8.isnan().all()  # ... and FP8 mode no x


def test_silu_mul_codes_rejects_an_odd_or_strided_last_dimension():
    mode = new_mode_tensor("cpu")
    with pytest.raises(ValueError, match="even last dimension"):
        smc.silu_mul_codes(torch.randn(2, 9).half(), mode)
    with pytest.raises(ValueError, match="unit stride"):
        smc.silu_mul_codes(torch.randn(8, 2).half().t(), mode)


@pytest.mark.parametrize("m, n, residual", [(1, 7, True), (5, 40, False), (3, 300, True)])  # n below its block
def test_rms_norm_codes_writes_y_in_fp16_mode_only_the_codes_in_fp8_mode_and_the_residual_in_both(m, n, residual):
    """vLLM's (fused-add) RMSNorm: the new residual in both modes, y in FP16 mode, and in FP8 mode the codes and
    scales of that y, bit for bit ``quantize_per_token``'s. Each mode leaves the other's outputs as it found them
    (poisoned). x is read through a row stride, as a slice of a wider tensor."""
    x = (torch.randn(m, n + 9) * 3).half()[:, :n]
    r = torch.randn(m, n).half() if residual else None
    w = (torch.rand(n) + 0.5).half()
    mode = new_mode_tensor("cpu")
    block, _ = rnc.launch_config(n)
    got = {}
    for name in ("fp16", "fp8"):
        set_host_mode(mode, name)
        y, q, s = poisoned_codes_outputs(m, n)
        ro = torch.full_like(y, float("nan"))
        rr = x if r is None else r
        rnc.rms_norm_codes_kernel[(m,)](x, rr, w, y, ro, q.view(torch.float8_e4m3fn), s, mode, n, 1e-5, x.stride(0),
                                        rr.stride(0), HAS_RESIDUAL=residual, BLOCK=block, INTERPRET=True)
        got[name] = y, ro, q, s
    set_host_mode(mode, "fp16")
    ref = rms_norm_codes_reference(x, r, w, 1e-5)
    y, ro16, q16, s16 = got["fp16"]
    y8, ro8, q, s = got["fp8"]
    assert ulps_apart(y, ref[0]) <= rnc.Y_ULPS
    rq, rs = quantize_per_token(y)
    assert torch.equal(q, rq.view(torch.uint8)) and torch.equal(s, rs)
    if residual:
        assert torch.equal(ro16, ref[1]) and torch.equal(ro8, ref[1])
    else:
        assert ro16.isnan().all() and ro8.isnan().all()
    assert (q16 == 0x7F).all() and s16.isnan().all()  # FP16 mode wrote no codes ...
    assert y8.isnan().all()  # ... and FP8 mode no y


def test_rms_norm_codes_rejects_rows_it_cannot_hold_or_a_mismatched_weight_or_residual():
    mode = new_mode_tensor("cpu")
    with pytest.raises(ValueError, match="rms_norm_codes needs"):
        rnc.rms_norm_codes(torch.randn(1, rnc.MAX_WIDTH + 1).half(), torch.ones(rnc.MAX_WIDTH + 1).half(), 1e-5, mode)
    with pytest.raises(ValueError, match="rms_norm_codes needs"):
        rnc.rms_norm_codes(torch.randn(2, 8).half(), torch.ones(9).half(), 1e-5, mode)
    with pytest.raises(ValueError, match="rms_norm_codes needs"):
        rnc.rms_norm_codes(torch.randn(8, 2).half().t(), torch.ones(8).half(), 1e-5, mode)
    with pytest.raises(ValueError, match="rms_norm_codes needs"):
        rnc.add_rms_norm_codes(torch.randn(2, 8).half(), torch.randn(3, 8).half(), torch.ones(8).half(), 1e-5, mode)
