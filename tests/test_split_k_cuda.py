"""Split-K on a CUDA GPU: the semaphore protocol under real concurrency and under CUDA graphs.

The CPU tests (tests/test_triton_kernels.py) run the programs one after another, so there the last
program to arrive is always the last split. Here the programs race: the output must still be the
same bits on every launch, the counters must be back at zero after each, and a captured graph must
replay it across mode flips.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import nested_linear, nested_split, split_k, triton_dispatch
from kernels.ops import new_mode_tensor
from kernels.triton_fp8 import nested_fp8_gemm
from kernels.triton_fp16 import nested_fp16_gemm
from kernels.tuning import TileConfig
from tests.kernel_helpers import poison_split_k_workspace, rel_err, split_k_partials_written

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [TileConfig(64, 16, 256, 4, 4, split_k=4), TileConfig(32, 16, 512, 4, 4, split_k=2),
           TileConfig(64, 64, 128, 4, 4, split_k=8), TileConfig(64, 64, 128, 4, 4, swap_ab=False, split_k=2)]


def _run(kind: str, x: torch.Tensor, nw, cfg: TileConfig) -> torch.Tensor:
    """One launch into a NaN-poisoned output, with the split-K workspace poisoned too."""
    poison_split_k_workspace(x.device)
    out = torch.full((x.shape[0], nw.shape[0]), float("nan"), device="cuda", dtype=x.dtype)
    if kind == "fp16":
        return nested_fp16_gemm(x, nw.upper, nw.lower, new_mode_tensor("cuda", "fp16"), nw.scale_exp, out=out, config=cfg)
    return nested_fp8_gemm(x, nw.upper, new_mode_tensor("cuda", "fp8"), nw.scale_exp, out=out, config=cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.block_n}x{c.block_m}x{c.block_k}s{c.split_k}"
                         + ("" if c.swap_ab else "-w_in_smem"))
@pytest.mark.parametrize("kind", ["fp16", "fp8"])
@pytest.mark.parametrize("m", [1, 7, 33, 64])
def test_split_k_gives_the_same_bits_every_launch_and_resets_its_counters(kind, m, cfg):
    if kind == "fp8" and not cfg.swap_ab:
        pytest.skip("the FP8 kernel always puts the weights in the MMA's M slot")
    n, k = 1000, 4096 + 96  # N and K ragged against every tile
    nw = nested_split((torch.randn(n, k, device="cuda") * 0.05).half())
    xs = [torch.randn(m, k, device="cuda").half() for _ in range(2)]
    # Alternate two inputs: a partial read before it was written would be the other input's.
    outs = [_run(kind, xs[i % 2], nw, cfg) for i in range(20)]
    assert split_k_partials_written(xs[1].device, m, n, cfg), "the launch did not run split-K"
    for j in range(2):
        assert all(torch.equal(outs[j], o) for o in outs[j::2]), "split-K output depends on arrival order"
    assert not split_k.semaphores(xs[0].device).any(), "a launch left a semaphore set"
    assert rel_err(outs[0], nested_linear(xs[0], nw, kind)) < 5e-3
    # Against one program per tile: the same products summed in another order. FP8 mode differs
    # more (1.1e-3 seen at M = 1): Hopper's FP8 MMA accumulates with fewer bits than fp32, and each
    # split starts its own accumulation from zero.
    unsplit = _run(kind, xs[0], nw, dataclasses.replace(cfg, split_k=1))
    assert rel_err(outs[0], unsplit) < (1e-3 if kind == "fp16" else 3e-3)


def test_split_k_configs_replay_under_a_cuda_graph_across_mode_flips(monkeypatch):
    n, k, m = 1024, 4096, 16
    nw = nested_split((torch.randn(n, k, device="cuda") * 0.05).half())
    x = torch.randn(m, k, device="cuda").half()
    cfg = {"fp16": TileConfig(32, 16, 256, 4, 4, split_k=4), "fp8": TileConfig(64, 16, 256, 4, 4, split_k=4)}
    monkeypatch.setattr(triton_dispatch, "get_config", lambda kind, *a: cfg[kind])
    monkeypatch.setattr(triton_dispatch, "USE_CONDITIONAL", False)
    mode = torch.zeros(1, dtype=torch.int32, device="cuda")  # no host mirror: the device-side pick
    eager = {}
    for code, name in ((0, "fp16"), (1, "fp8")):
        mode.fill_(code)
        eager[name] = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)
    for code, name in ((1, "fp8"), (0, "fp16"), (1, "fp8"), (0, "fp16")):
        mode.fill_(code)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, eager[name]), name


def test_a_capture_that_finds_no_split_k_buffers_runs_one_program_per_tile(monkeypatch):
    """Inside a capture the buffers' zeroing would only be recorded, so the capture must not make them."""
    n, k, m = 512, 2048, 16
    nw = nested_split((torch.randn(n, k, device="cuda") * 0.05).half())
    x = torch.randn(m, k, device="cuda").half()
    mode = new_mode_tensor("cuda", "fp16")
    cfg = TileConfig(32, 16, 256, 4, 4, split_k=4)
    unsplit = nested_fp16_gemm(x, nw.upper, nw.lower, mode, 0, config=dataclasses.replace(cfg, split_k=1))
    monkeypatch.setattr(split_k, "_BUFFERS", {})
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = nested_fp16_gemm(x, nw.upper, nw.lower, mode, 0, config=cfg)
    assert not split_k._BUFFERS, "a capture allocated split-K buffers"
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, unsplit)
