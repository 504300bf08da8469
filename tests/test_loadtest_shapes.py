"""Load shapes and open-loop dispatch: arrival counts, phase bounds, trace fidelity, send timing."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from loadtests.dispatch import dispatch_open_loop
from loadtests.shapes import Arrival, ShapeOptions, build_schedule
from loadtests.trace import DATA_DIR_ENV, DEFAULT_TRACE, load_trace, resolve_trace_path


def _count_in(arrivals: list[Arrival], start: float, end: float) -> int:
    return sum(1 for a in arrivals if start <= a.t < end)


def _poisson_ok(observed: int, expected: float, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected)


def _write_trace(path: Path, offsets: list[float], ctx: list[int], gen: list[int]) -> Path:
    base = datetime(2024, 5, 14, 12, 0, tzinfo=timezone.utc)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"{base + timedelta(seconds=o)},{c},{g}" for o, c, g in zip(offsets, ctx, gen)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def small_trace(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    offsets = np.sort(rng.uniform(0, 60, 900)).round(6)
    ctx = rng.integers(1, 4000, 900).tolist()
    gen = rng.integers(1, 400, 900).tolist()
    return _write_trace(tmp_path / "t.csv", offsets.tolist(), ctx, gen), offsets


def test_spike_has_three_phases_and_each_phase_gets_its_poisson_rate() -> None:
    s = build_schedule("spike", ShapeOptions(duration=600, base_rate=2, spike_rate=20, spike_start=200,
                                             spike_length=100, seed=3))
    assert [(p.name, p.start, p.end) for p in s.phases] == [
        ("base-before", 0, 200), ("burst", 200, 300), ("base-after", 300, 600)]
    for p, rate in zip(s.phases, (2, 20, 2)):
        assert _poisson_ok(_count_in(s.arrivals, p.start, p.end), rate * (p.end - p.start))
    assert all(0 <= a.t < 600 for a in s.arrivals)
    assert [a.t for a in s.arrivals] == sorted(a.t for a in s.arrivals)


def test_spike_defaults_put_the_burst_in_the_middle_third() -> None:
    s = build_schedule("spike", ShapeOptions(duration=90))
    assert [(p.start, p.end) for p in s.phases] == [(0, 30), (30, 60), (60, 90)]


def test_spike_outside_the_run_is_rejected() -> None:
    with pytest.raises(ValueError):
        build_schedule("spike", ShapeOptions(duration=10, spike_start=12))


def test_step_gives_one_phase_per_rate_with_that_rate() -> None:
    s = build_schedule("step", ShapeOptions(duration=400, step_rates=(1, 5, 10, 3), seed=5))
    assert len(s.phases) == 4
    for p, rate in zip(s.phases, (1, 5, 10, 3)):
        assert p.end - p.start == pytest.approx(100)
        assert _poisson_ok(_count_in(s.arrivals, p.start, p.end), rate * 100)


def test_sinusoid_windows_follow_the_integrated_rate() -> None:
    mean, amp, period, d = 10.0, 8.0, 100.0, 400.0
    s = build_schedule("sinusoid", ShapeOptions(duration=d, sine_mean=mean, sine_amplitude=amp, sine_period=period,
                                                window=25, seed=2))
    assert len(s.phases) == 16
    for p in s.phases:
        expected = mean * (p.end - p.start) - amp * period / (2 * math.pi) * (
            math.cos(2 * math.pi * p.end / period) - math.cos(2 * math.pi * p.start / period))
        assert _poisson_ok(_count_in(s.arrivals, p.start, p.end), expected)


def test_uniform_arrivals_are_evenly_spaced_at_the_rate() -> None:
    s = build_schedule("step", ShapeOptions(duration=10, step_rates=(4,), arrivals="uniform"))
    assert np.allclose(np.diff([a.t for a in s.arrivals]), 0.25)
    assert len(s.arrivals) == 40


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = build_schedule("spike", ShapeOptions(duration=30, seed=7)).arrivals
    b = build_schedule("spike", ShapeOptions(duration=30, seed=7)).arrivals
    c = build_schedule("spike", ShapeOptions(duration=30, seed=8)).arrivals
    assert a == b and a != c


def test_trace_replay_reproduces_every_arrival_time_and_length(small_trace) -> None:
    path, offsets = small_trace
    tr = load_trace(str(path))
    s = build_schedule("trace", ShapeOptions(duration=61, trace_file=str(path)))
    assert len(s.arrivals) == len(offsets)
    assert np.allclose([a.t for a in s.arrivals], offsets - offsets[0], atol=1e-5)
    assert [a.prompt_tokens for a in s.arrivals] == tr.context_tokens.tolist()
    assert [a.output_tokens for a in s.arrivals] == tr.generated_tokens.tolist()


def test_trace_time_scale_stretches_time_and_keeps_every_request(small_trace) -> None:
    path, offsets = small_trace
    s = build_schedule("trace", ShapeOptions(duration=30, trace_file=str(path), time_scale=0.5))
    assert len(s.arrivals) == len(offsets)
    assert np.allclose([a.t for a in s.arrivals], (offsets - offsets[0]) * 0.5, atol=1e-5)
    assert "time x0.5" in s.params["scaling"]


def test_trace_duration_and_start_select_exactly_that_window(small_trace) -> None:
    path, offsets = small_trace
    rel = offsets - offsets[0]
    s = build_schedule("trace", ShapeOptions(duration=20, trace_file=str(path), trace_start=10, time_scale=2))
    inside = rel[(rel >= 10) & (rel < 20)]
    assert np.allclose([a.t for a in s.arrivals], (inside - 10) * 2, atol=1e-5)


def test_trace_rate_scale_thins_requests_but_keeps_their_times(small_trace) -> None:
    path, offsets = small_trace
    rel = offsets - offsets[0]
    s = build_schedule("trace", ShapeOptions(duration=61, trace_file=str(path), rate_scale=0.25, seed=4))
    n, p = len(offsets), 0.25
    assert abs(len(s.arrivals) - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    nearest = np.abs(rel[None, :] - np.asarray([a.t for a in s.arrivals])[:, None]).min(axis=1)
    assert nearest.max() < 1e-5
    with pytest.raises(ValueError):
        build_schedule("trace", ShapeOptions(duration=61, trace_file=str(path), rate_scale=2))


def test_real_azure_trace_replays_its_count_and_per_10s_profile() -> None:
    try:
        tr = load_trace(DEFAULT_TRACE)
    except FileNotFoundError:
        pytest.skip("shared/data not beside the repo")
    s = build_schedule("trace", ShapeOptions(duration=tr.t[-1] + 1, trace_file=DEFAULT_TRACE))
    assert len(s.arrivals) == len(tr.t)
    got = np.bincount([int(a.t // 10) for a in s.arrivals])
    want = np.bincount((tr.t // 10).astype(int))
    assert got.tolist() == want.tolist()


def test_clamping_caps_lengths_and_counts_what_it_clamped(small_trace) -> None:
    path, _ = small_trace
    s = build_schedule("trace", ShapeOptions(duration=61, trace_file=str(path), max_prompt_tokens=500,
                                             max_output_tokens=50))
    tr = load_trace(str(path))
    assert max(a.prompt_tokens for a in s.arrivals) <= 500
    assert max(a.output_tokens for a in s.arrivals) <= 50
    c = s.params["clamping"]
    assert c["prompts_clamped"] == int((tr.context_tokens > 500).sum())
    assert c["outputs_clamped"] == int((tr.generated_tokens > 50).sum())


def test_trace_is_found_through_the_data_dir_env_var(small_trace, tmp_path, monkeypatch) -> None:
    path, _ = small_trace
    monkeypatch.setenv(DATA_DIR_ENV, str(path.parent))
    assert resolve_trace_path(path.name) == path
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_trace_path("missing.csv")


class FakeClock:
    """Simulated time for the dispatcher: ``sleep`` advances it, so the tests check the dispatcher's
    arithmetic, not how busy the machine running them is."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.t += dt


def test_dispatcher_sends_a_trace_schedule_on_time(small_trace) -> None:
    path, _ = small_trace
    s = build_schedule("trace", ShapeOptions(duration=3, trace_file=str(path), time_scale=0.05))
    clock, sent = FakeClock(), []
    res = dispatch_open_loop(s.arrivals, lambda i, a, lag: sent.append(clock.now()) or True,
                             now=clock.now, sleep=clock.sleep)
    assert res.sent == len(s.arrivals) == len(sent) and res.dropped == 0
    late = np.asarray(sent) - res.t0 - np.asarray([a.t for a in s.arrivals])
    assert np.allclose(late, 0.0, atol=1e-9) and np.allclose(res.lags, 0.0, atol=1e-9)


def test_dispatcher_is_open_loop_a_stall_does_not_shift_later_arrivals() -> None:
    arrivals = [Arrival(0.05 * i, 1, 1) for i in range(20)]
    clock, sent = FakeClock(), []

    def start(i: int, a: Arrival, lag: float) -> bool:
        sent.append(clock.now())
        if i == 2:
            clock.t += 0.3  # a stalled start: arrivals 3..7 are due meanwhile
        return True

    res = dispatch_open_loop(arrivals, start, now=clock.now, sleep=clock.sleep)
    late = np.asarray(sent) - res.t0 - np.asarray([a.t for a in arrivals])
    assert late[3] == pytest.approx(0.25) and late[7] == pytest.approx(0.05)  # overdue ones go out at once ...
    assert np.allclose(late[8:], 0.0, atol=1e-9)  # ... and the schedule resumes on time (no catch-up shift)
    assert res.lags[3] == pytest.approx(0.25)


def test_dispatcher_counts_requests_it_could_not_start() -> None:
    arrivals = [Arrival(0.0, 1, 1) for _ in range(10)]
    clock = FakeClock()
    res = dispatch_open_loop(arrivals, lambda i, a, lag: i % 2 == 0, now=clock.now, sleep=clock.sleep)
    assert (res.sent, res.dropped) == (5, 5)
