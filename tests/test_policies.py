"""Policies replayed over recorded ReplicaStats traces (tests/data/*.json, see make_traces.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from policies import POLICIES, Decision, ReplicaStats, build_policy
from policies.base import Policy
from policies.fp16_load import Fp16LoadPolicy, token_rates
from policies.registry import policy_params
from policies.queue_depth import QueueDepthPolicy
from policies.slo import SLOPolicy
from policies.static import StaticPolicy
from policies.token_budget import TokenBudgetPolicy

DATA = Path(__file__).parent / "data"


def load(name: str) -> list[ReplicaStats]:
    return [ReplicaStats.from_dict(d) for d in json.loads((DATA / f"{name}.json").read_text())]


def replay(policy: Policy, trace: list[ReplicaStats], start: str = "fp16") -> list[tuple[int, str, str, str]]:
    """Drive a policy the way the controller does: one decision per sample, dwell since the last switch."""
    mode, switched_at = start, None
    out = []
    for i, s in enumerate(trace):
        held = math.inf if switched_at is None else s.timestamp - switched_at
        d = policy.decide(trace[: i + 1], mode, held)  # type: ignore[arg-type]
        if d.mode != mode:
            out.append((i, mode, d.mode, d.reason))
            mode, switched_at = d.mode, s.timestamp
    return out


def stats(**kw) -> ReplicaStats:
    base = dict(replica_id="r0", mode="fp16", timestamp=1000.0, max_num_batched_tokens=8192)
    return ReplicaStats(**{**base, **kw})


# Phases of burst.json (indices at 200 ms): idle < 25 <= ramp < 50 <= plateau < 100 <= drain < 125 <= idle.
RAMP, PLATEAU, DRAIN, IDLE = range(25, 50), range(50, 100), range(100, 125), range(125, 150)


def test_stats_round_trip_and_reject_unknown_fields():
    s = load("burst")[40]
    assert ReplicaStats.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        ReplicaStats.from_dict({**s.to_dict(), "num_queued": 3})
    with pytest.raises(ValueError):
        ReplicaStats.from_dict({**s.to_dict(), "mode": "int4"})


@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_static_policy_holds_its_mode_through_a_burst(mode):
    trace = load("burst")
    switches = replay(StaticPolicy(mode), trace, start=mode)
    assert switches == []
    assert replay(StaticPolicy(mode), trace, start="fp8" if mode == "fp16" else "fp16")[0][0] == 0


def test_queue_depth_goes_fp8_in_the_ramp_and_fp16_after_the_drain():
    switches = replay(QueueDepthPolicy(high=8, low=2, min_dwell_s=5, window=4), load("burst"))
    assert [(a, b) for _, a, b, _ in switches] == [("fp16", "fp8"), ("fp8", "fp16")]
    (up, _, _, why_up), (down, _, _, why_down) = switches
    assert up in RAMP and (down in DRAIN or down in IDLE)
    assert "waiting" in why_up and ">= 8" in why_up and "<= 2" in why_down


def test_queue_depth_counts_running_only_when_asked():
    s = stats(num_waiting=0, num_running=40)
    assert QueueDepthPolicy(high=8, low=2).decide([s], "fp16", math.inf).mode == "fp16"
    assert QueueDepthPolicy(high=8, low=2, include_running=True).decide([s], "fp16", math.inf).mode == "fp8"


@pytest.mark.parametrize("start", ["fp16", "fp8"])
def test_queue_depth_does_not_flap_on_a_signal_inside_the_band(start):
    # The oscillating trace swings 3 <-> 7 every sample, across any single threshold in between.
    trace = load("oscillating")
    assert replay(QueueDepthPolicy(high=8, low=2, min_dwell_s=0, window=1), trace, start) == []
    # Without a band (one threshold at 5) the same trace flips on every sample: the test can fail.
    assert len(replay(QueueDepthPolicy(high=5, low=4.99, min_dwell_s=0, window=1), trace, start)) > 40


def test_queue_depth_dwell_bounds_the_switch_rate():
    trace = load("spiky")  # queue 0 <-> 12 every second
    free = replay(QueueDepthPolicy(high=8, low=2, min_dwell_s=0, window=1), trace)
    held = replay(QueueDepthPolicy(high=8, low=2, min_dwell_s=3, window=1), trace)
    assert len(free) >= 19
    assert 0 < len(held) < len(free)
    times = [trace[i].timestamp for i, *_ in held]
    assert all(b - a >= 3 for a, b in zip(times, times[1:]))
    held_back = QueueDepthPolicy(high=8, low=2, min_dwell_s=3, window=1).decide([stats(num_waiting=0)], "fp8", 1.0)
    assert held_back.mode == "fp8" and "dwell 1.0s < 3s" in held_back.reason


def test_queue_depth_averages_over_its_window():
    calm = [stats(num_waiting=0, timestamp=1000 + i) for i in range(3)]
    spike = calm + [stats(num_waiting=20, timestamp=1004)]
    assert QueueDepthPolicy(high=8, low=2, window=4).decide(spike, "fp16", math.inf).mode == "fp16"
    assert QueueDepthPolicy(high=8, low=2, window=1).decide(spike, "fp16", math.inf).mode == "fp8"


def test_slo_prediction_switches_before_the_target_is_approached():
    trace = load("burst")
    observed_only = replay(SLOPolicy(ttft_s=1.0, tpot_s=0.1, predict_s=0), trace)
    predicted = replay(SLOPolicy(ttft_s=1.0, tpot_s=0.1, predict_s=1.0), trace)
    first_near = next(i for i, s in enumerate(trace) if s.ttft_p90 is not None and s.ttft_p90 >= 0.9)
    assert observed_only[0][:3] == (first_near, "fp16", "fp8")
    assert predicted[0][0] < first_near and "predicted" in predicted[0][3]
    for switches in (observed_only, predicted):
        assert [(a, b) for _, a, b, _ in switches] == [("fp16", "fp8"), ("fp8", "fp16")]
        assert switches[1][0] in DRAIN  # back once ttft_p90 <= 0.5 s, long before idle


def test_slo_prediction_needs_the_observed_level_when_asked():
    # A step signal jumping from its decode-only level (8 ms) to its prefill-step level (28 ms) within a
    # second, at a steady load: the trend extrapolates past 0.9 of a 50 ms target.
    jump = [stats(num_running=40, tpot_p90=v, timestamp=1000 + 0.2 * i)
            for i, v in enumerate([0.008, 0.008, 0.008, 0.028, 0.028])]
    d = SLOPolicy(tpot_s=0.05).decide(jump, "fp16", math.inf)
    assert d.mode == "fp8" and "predicted" in d.reason  # the default trusts the prediction
    assert SLOPolicy(tpot_s=0.05, predict_min_ratio=0.6).decide(jump, "fp16", math.inf).mode == "fp16"
    climb = jump[:3] + [stats(num_running=40, tpot_p90=v, timestamp=1000.6 + 0.2 * i)
                        for i, v in enumerate([0.031, 0.034])]
    d = SLOPolicy(tpot_s=0.05, predict_min_ratio=0.6).decide(climb, "fp16", math.inf)
    assert d.mode == "fp8" and "predicted" in d.reason  # past 0.6 of the target, the trend counts again
    with pytest.raises(ValueError, match="predict_min_ratio"):
        build_policy("slo", {"tpot_s": 0.05, "predict_min_ratio": 0.95})


def test_slo_uses_the_tighter_target():
    s = stats(num_running=32, ttft_p90=0.1, tpot_p90=0.046)
    d = SLOPolicy(ttft_s=2.0, tpot_s=0.05).decide([s], "fp16", math.inf)
    assert d.mode == "fp8" and "tpot_p90" in d.reason


def test_slo_request_signal_reads_per_request_tpot_not_the_step_tail():
    # Long prompts: prefill-carrying steps put the per-token p90 near the target while requests'
    # mean TPOT (what the SLO measures) has room; "step" goes fp8, "request" stays fp16.
    s = stats(num_running=64, tpot_p90=0.047, req_tpot_p90=0.02)
    assert SLOPolicy(tpot_s=0.05, predict_s=0).decide([s], "fp16", math.inf).mode == "fp8"
    d = SLOPolicy(tpot_s=0.05, predict_s=0, tpot_signal="request").decide([s], "fp16", math.inf)
    assert d.mode == "fp16" and "req_tpot_p90" in d.reason
    back = SLOPolicy(tpot_s=0.05, predict_s=0, tpot_signal="request").decide([s], "fp8", math.inf)
    assert back.mode == "fp16"  # 0.4 of target: headroom to return


def test_slo_rejects_an_unknown_tpot_signal():
    with pytest.raises(ValueError, match="tpot_signal"):
        build_policy("slo", {"tpot_s": 0.05, "tpot_signal": "median"})


def test_slo_needs_headroom_to_return_and_respects_dwell():
    hot = stats(num_running=32, ttft_p90=0.7)  # 0.7 of target: below up (0.9), above down (0.5)
    cool = stats(num_running=32, ttft_p90=0.4)
    p = SLOPolicy(ttft_s=1.0, min_dwell_s=5, predict_s=0)
    assert p.decide([hot], "fp8", math.inf).mode == "fp8"
    assert p.decide([hot], "fp16", math.inf).mode == "fp16"
    assert p.decide([cool], "fp8", 1.0).mode == "fp8"
    assert p.decide([cool], "fp8", 6.0).mode == "fp16"


def test_slo_without_latency_samples_returns_only_when_idle():
    p = SLOPolicy(ttft_s=1.0, min_dwell_s=0)
    assert p.decide([stats(num_waiting=0, num_running=0)], "fp8", 10.0).mode == "fp16"
    assert p.decide([stats(num_waiting=5, num_running=0)], "fp8", 10.0).mode == "fp8"
    assert p.decide([stats()], "fp16", 10.0).mode == "fp16"


def test_token_budget_is_the_published_rule():
    p = TokenBudgetPolicy(min_dwell_s=0)
    assert p.decide([stats(scheduled_tokens_per_step=4096)], "fp16", math.inf).mode == "fp16"  # = half: not over
    assert p.decide([stats(scheduled_tokens_per_step=4097)], "fp16", math.inf).mode == "fp8"
    assert p.decide([stats(scheduled_tokens_per_step=4096)], "fp8", math.inf).mode == "fp16"
    unknown = stats(scheduled_tokens_per_step=9000, max_num_batched_tokens=0)
    assert p.decide([unknown], "fp16", math.inf) == Decision("fp16", "step budget unknown (max_num_batched_tokens=0)")


def test_token_budget_follows_the_burst_and_dwell_holds_it():
    trace = load("burst")
    switches = replay(TokenBudgetPolicy(min_dwell_s=2), trace)
    assert [(a, b) for _, a, b, _ in switches] == [("fp16", "fp8"), ("fp8", "fp16")]
    assert switches[0][0] in RAMP and switches[1][0] in DRAIN
    assert TokenBudgetPolicy(min_dwell_s=2).decide([stats(scheduled_tokens_per_step=100)], "fp8", 1.0).mode == "fp8"


def counted(t: float, prompt: int, output: int) -> ReplicaStats:
    return stats(timestamp=t, prompt_tokens_total=prompt, output_tokens_total=output)


def test_token_rates_span_the_window_from_the_counters():
    h = [counted(100.0 + i, 1000 * i, 10 * i * i) for i in range(6)]  # output accelerates
    assert token_rates(h, 2.0) == pytest.approx((1000.0, 10 * (25 - 9) / 2))  # samples at 103 and 105
    assert token_rates(h, 2.5) == pytest.approx((1000.0, 10 * (25 - 4) / 3))  # the newest sample >= 2.5 s old
    assert token_rates(h, 60.0) == pytest.approx((1000.0, 50.0))  # shorter history: all of it
    assert token_rates(h[:1], 2.0) is None
    assert token_rates([counted(100.0, 5000, 50), counted(101.0, 10, 0)], 2.0) is None  # counters went back


def test_fp16_load_is_fp16s_busy_fraction_with_hysteresis_and_dwell():
    p = Fp16LoadPolicy(s_per_prompt_token=1e-5, s_per_output_token=1e-3, high=0.8, low=0.6, window_s=1.0,
                       min_dwell_s=3.0)

    def at(prompt_per_s: float, output_per_s: float) -> list[ReplicaStats]:
        return [counted(0.0, 0, 0), counted(1.0, int(prompt_per_s), int(output_per_s))]

    assert p.decide(at(50_000, 300), "fp16", math.inf).mode == "fp8"  # 0.5 + 0.3 = 0.8
    assert p.decide(at(50_000, 290), "fp16", math.inf).mode == "fp16"  # 0.79
    assert p.decide(at(29_000, 300), "fp8", math.inf).mode == "fp16"  # 0.59
    assert p.decide(at(30_000, 310), "fp8", math.inf).mode == "fp8"  # 0.61: inside the band
    assert p.decide(at(29_000, 300), "fp8", 2.0).mode == "fp8"  # dwell
    unknown = p.decide([counted(0.0, 0, 0)], "fp8", math.inf)
    assert unknown.mode == "fp8" and "unknown" in unknown.reason


def test_fp16_load_follows_the_burst_on_token_rates_within_its_window():
    # The burst's load crosses the default threshold only at its plateau (busy ~0.84 there).
    for window_s, leaves_by in ((3.0, PLATEAU.start + 15), (1.0, PLATEAU.start + 5)):  # 200 ms samples
        switches = replay(Fp16LoadPolicy(window_s=window_s), load("burst"))
        assert [(a, b) for _, a, b, _ in switches] == [("fp16", "fp8"), ("fp8", "fp16")]
        assert PLATEAU.start <= switches[0][0] <= leaves_by and switches[1][0] in DRAIN
        assert "fp16 busy fraction" in switches[0][3]


def test_fp16_load_rejects_costs_and_bands_that_cannot_work():
    for params, match in [({"s_per_prompt_token": 0, "s_per_output_token": 0}, "not both 0"),
                          ({"s_per_output_token": -1e-4}, "costs >= 0"), ({"low": 0.8, "high": 0.8}, "low < high"),
                          ({"window_s": 0}, "window_s > 0")]:
        with pytest.raises(ValueError, match=match):
            build_policy("fp16_load", params)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_are_pure(name):
    params = {"ttft_s": 1.0, "tpot_s": 0.05} if name == "slo" else {}
    p, trace, osc = build_policy(name, params), load("burst"), load("oscillating")
    for i in (10, 40, 80, 110, 140):
        first = p.decide(trace[: i + 1], "fp16", 3.0)
        p.decide(osc, "fp8", 100.0)  # an unrelated call in between must not matter
        assert p.decide(list(trace[: i + 1]), "fp16", 3.0) == first
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_dwell_s = 0  # type: ignore[misc]
    assert replay(p, trace) == replay(build_policy(name, params), trace)


def test_build_policy_names_params_and_errors():
    assert build_policy("static_fp8").decide([stats()], "fp16", 0).mode == "fp8"
    assert build_policy("queue_depth", {"high": 4, "low": 1}) == QueueDepthPolicy(high=4, low=1)
    assert isinstance(build_policy("slo", {"tpot_s": 0.05}), SLOPolicy)
    assert isinstance(build_policy("token_budget", {"threshold": 0.6}), TokenBudgetPolicy)
    with pytest.raises(ValueError, match="unknown policy 'fifo'.*queue_depth"):
        build_policy("fifo", {})
    with pytest.raises(ValueError, match="unknown params \\['hi'\\].*high"):
        build_policy("queue_depth", {"hi": 4})
    with pytest.raises(ValueError, match="unknown params \\['mode'\\]"):
        build_policy("static_fp16", {"mode": "fp8"})
    with pytest.raises(ValueError, match="low < high"):
        build_policy("queue_depth", {"high": 2, "low": 2})
    with pytest.raises(ValueError, match="at least one"):
        build_policy("slo", {})
    with pytest.raises(ValueError, match="headroom_down < headroom_up"):
        build_policy("slo", {"ttft_s": 1, "headroom_up": 0.5, "headroom_down": 0.6})
    with pytest.raises(ValueError, match="threshold"):
        build_policy("token_budget", {"threshold": 0})


def test_build_policy_checks_param_types_so_decide_cannot_fail_later():
    assert build_policy("queue_depth", {"high": "8", "window": 3.0}) == QueueDepthPolicy(high=8.0, window=3)
    assert isinstance(build_policy("queue_depth", {"window": 3.0}).window, int)
    for params, match in [({"high": "lots"}, "param 'high'"), ({"window": 2.5}, "param 'window'"),
                          ({"include_running": [1]}, "param 'include_running'")]:
        with pytest.raises(ValueError, match=match):
            build_policy("queue_depth", params)
    with pytest.raises(ValueError, match="param 'ttft_s'"):
        build_policy("slo", {"ttft_s": {"p90": 1}})
    with pytest.raises(ValueError, match="mapping"):
        build_policy("queue_depth", ["high"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy(["slo"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_params_rebuild_the_same_policy(name):
    p = build_policy(name, {"ttft_s": 1.0} if name == "slo" else {})
    params = policy_params(p)
    assert build_policy(p.name, params) == p
    assert (params == {}) == name.startswith("static_")
