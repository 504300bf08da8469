"""The Gluon sweeps' check-then-time bookkeeping (``kernels.gluon_check.time_configs``), on the CPU.

The sweeps themselves need an H200; what decides which tile lands in a table runs anywhere: a config
is timed only if its output passed the check, a failing or raising config is recorded, not timed,
and the fastest timed config is the row's best.
"""

from __future__ import annotations

import pytest
import torch

from kernels import gluon_check


def test_time_configs_times_only_checked_configs_and_keeps_the_fastest(monkeypatch):
    timings = {"fast": 3.0, "slow": 5.0, "wrong": 1.0}
    monkeypatch.setattr(gluon_check, "bench_us", lambda fn, rep_ms: timings[fn.args[0]])
    ref = torch.arange(12.0).reshape(3, 4)
    out = torch.empty_like(ref)

    def run(cfg: str) -> None:
        if cfg == "raises":
            raise ValueError("tile does not fit")
        if cfg == "unwritten":
            return  # leaves the NaN poison
        out.copy_(ref if cfg != "wrong" else ref + 1)

    row = dict(cublas_us=6.0)
    passed = gluon_check.time_configs(row, ["slow", "wrong", "fast", "raises", "unwritten"], run, out, ref,
                                      1e-3, rep_ms=1)
    assert passed == 2
    assert row["best_cfg"] == "fast" and row["best_us"] == 3.0 and row["ratio"] == pytest.approx(2.0)
    by_cfg = {e["cfg"]: e for e in row["configs"]}
    assert "us" not in by_cfg["wrong"] and by_cfg["wrong"]["rel_err"] > 1e-3  # fastest, but wrong: not timed
    assert "ValueError" in by_cfg["raises"]["error"]
    assert "us" not in by_cfg["unwritten"]


def test_time_configs_leaves_no_best_when_nothing_passes(monkeypatch):
    monkeypatch.setattr(gluon_check, "bench_us", lambda fn, rep_ms: 1.0)
    ref = torch.ones(2, 2)
    out = torch.empty_like(ref)
    row = dict(cublas_us=1.0)
    assert gluon_check.time_configs(row, ["a"], lambda cfg: None, out, ref, 1e-3, rep_ms=1) == 0
    assert "best_cfg" not in row and len(row["configs"]) == 1


def test_split_k_variants_are_timed_only_where_the_grid_leaves_half_the_sms_idle():
    configs = gluon_check.with_splits([(64, 64, 128, 5), (128, 64, 64, 4), (64, 256, 64, 5)])
    # Split variants only for the 64-row tile of <= 128 tokens (the ones compiled without spills).
    assert (64, 64, 128, 5, 2) in configs and (64, 64, 128, 5, 4) in configs
    assert not any(len(c) > 4 and c[4] > 1 and c[:4] in ((128, 64, 64, 4), (64, 256, 64, 5)) for c in configs)
    # 8B.o (N = 4096) at M = 64: 64 tiles on 132 SMs, so split 2 (128 programs) is timed, split 4 is not.
    got = gluon_check.configs_for(64, configs, 4096, 132)
    assert (64, 64, 128, 5, 2) in got and (64, 64, 128, 5, 4) not in got and (64, 64, 128, 5) in got
    # 70B.gate_up (N = 57344): 896 tiles already; no split variant.
    assert all(len(c) == 4 or c[4] == 0 for c in gluon_check.configs_for(64, configs, 57344, 132))


def test_stream_k_variants_are_timed_only_where_the_grid_fills_its_waves_badly():
    configs = gluon_check.with_splits([(64, 256, 64, 5), (128, 256, 64, 4)])
    assert (64, 256, 64, 5, 0) in configs and (128, 256, 64, 4, 0) in configs  # 0: tuning.STREAM_K
    # 8B.qkv (N = 6144) at M = 256: 96 tiles of 64 rows (0.73 of a wave), 48 of 128 (0.36): both timed.
    got = gluon_check.configs_for(256, configs, 6144, 132)
    assert (64, 256, 64, 5, 0) in got and (128, 256, 64, 4, 0) in got
    # 70B.o (N = 8192): 128 tiles of 64 rows fill 0.97 of a wave, so only the 128-row tile gets stream-K.
    got = gluon_check.configs_for(256, configs, 8192, 132)
    assert (64, 256, 64, 5, 0) not in got and (128, 256, 64, 4, 0) in got
    assert gluon_check.configs_for(256, configs) == [(64, 256, 64, 5), (128, 256, 64, 4)]  # no N: no variants


def test_configs_named_on_the_command_line_keep_every_split_but_not_wide_token_tiles():
    named = [(64, 128, 64, 9, 2), (64, 128, 64, 9, 4), (64, 256, 64, 5, 0), (64, 256, 64, 5)]
    # 8B.qkv at M = 256: 192 tiles of 128 tokens, so the heuristic would time no split of them.
    assert gluon_check.configs_for(256, named, 6144, 132) == [(64, 256, 64, 5, 0), (64, 256, 64, 5)]
    assert gluon_check.configs_for(256, named, 6144, 132, named=True) == named
    assert gluon_check.configs_for(64, named, 6144, 132, named=True) == []  # token tiles wider than M needs
