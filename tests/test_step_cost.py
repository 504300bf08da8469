"""The per-token cost fit that calibrates the fp16_load policy: per mode, single-mode spans only."""

import json
import random

import pytest

from loadtests.step_cost import fit, main, mode_spans, run_costs

COSTS = {"fp16": (0.006, 1e-5, 3e-4), "fp8": (0.004, 6e-6, 2e-4)}  # overhead, per prompt, per output token


def _report(t0, modes_at_start, switches=()):
    return {"run": {"label": "run", "t0": t0, "duration_s": 20.0, "drain_s": 0.0},
            "modes_at_start": modes_at_start,
            "switches": [{"time": t, "replica": r, "to": m} for t, r, m in switches]}


def _steps(t0, t1, mode_at, rng, pid=1):
    """Steps of random size whose durations follow COSTS of the mode in force, with a little noise."""
    out, t = [], t0
    while t < t1:
        prompt, output = rng.choice([0, 0, 512, 2048]), rng.randint(1, 64)
        a, p, o = COSTS[mode_at(t)]
        t += a + p * prompt + o * output + rng.uniform(-2e-4, 2e-4)
        out.append({"t": t, "pid": pid, "prompt_tokens": prompt, "gen_tokens": output, "running": output,
                    "waiting": 0})
    return out


def test_fit_recovers_each_modes_costs_from_its_own_span():
    rng = random.Random(7)
    steps = _steps(100.0, 120.0, lambda t: "fp16" if t < 110.0 else "fp8", rng)
    costs = run_costs(steps, _report(100.0, {"r0": "fp16"}, [(110.0, "r0", "fp8")]))["fits"]
    for mode, (a, p, o) in COSTS.items():
        f = costs[mode]
        assert f["overhead_s"] == pytest.approx(a, rel=0.1)
        assert f["s_per_prompt_token"] == pytest.approx(p, rel=0.05)
        assert f["s_per_output_token"] == pytest.approx(o, rel=0.05)
        assert f["r2"] > 0.99


def test_spans_where_replicas_disagree_are_left_out():
    rep = _report(100.0, {"a": "fp16", "b": "fp16"}, [(105.0, "a", "fp8"), (112.0, "b", "fp8")])
    assert mode_spans(rep) == [(100.0, 105.0, "fp16"), (112.0, 120.0, "fp8")]
    assert mode_spans(_report(100.0, {"a": "fp8"}, [(130.0, "a", "fp16")])) == [(100.0, 120.0, "fp8")]


def test_idle_gaps_and_steps_after_idle_records_are_not_step_times():
    rows = [{"t": 100.0 + 0.01 * i, "pid": 1, "prompt_tokens": 0, "gen_tokens": 4, "waiting": 0} for i in range(10)]
    rows += [{"t": 101.0, "pid": 1, "prompt_tokens": 0, "gen_tokens": 0, "waiting": 0},  # idle record
             {"t": 101.5, "pid": 1, "prompt_tokens": 0, "gen_tokens": 4, "waiting": 0},  # follows idle
             {"t": 103.0, "pid": 1, "prompt_tokens": 0, "gen_tokens": 4, "waiting": 0}]  # a 1.5 s gap
    samples = run_costs(rows, _report(100.0, {"r": "fp16"}))["samples"]["fp16"]
    assert len(samples) == 9 and all(dt == pytest.approx(0.01) for _, _, dt in samples)


def test_full_steps_are_the_steps_with_requests_waiting_at_both_ends():
    rows, t = [], 100.0
    for i in range(40):  # 10 ms steps; from i = 20 a backlog: 50 ms steps with requests waiting
        backlog = i >= 20
        t += 0.05 if backlog and i > 20 else 0.01
        rows.append({"t": t, "pid": 1, "prompt_tokens": 2048 if backlog else 0, "gen_tokens": 8,
                     "waiting": 3 if backlog else 0})
    full = run_costs(rows, _report(100.0, {"r": "fp16"}))["full_steps"]["fp16"]
    assert full["steps"] == 19  # the step into the backlog had no one waiting before it
    assert full["p50_s"] == pytest.approx(0.05) and full["p90_s"] == pytest.approx(0.05)
    assert run_costs(rows[:20], _report(100.0, {"r": "fp16"}))["full_steps"]["fp16"] is None


def test_fit_refuses_samples_that_cannot_separate_the_costs():
    assert fit([(0, 4, 0.01), (0, 4, 0.011), (0, 4, 0.012)]) is None  # prompt never varies: singular


def test_cli_prints_fp16_load_params(tmp_path, capsys):
    rng = random.Random(3)
    log = tmp_path / "steps.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _steps(100.0, 120.0, lambda t: "fp16", rng)))
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(_report(100.0, {"r0": "fp16"})))
    assert main(["--steps", str(log), str(rep), "--out", str(tmp_path / "fit.json")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fp16_load params: "))
    params = json.loads(line.split(": ", 1)[1])
    assert params["s_per_prompt_token"] == pytest.approx(1e-5, rel=0.05)
    assert params["s_per_output_token"] == pytest.approx(3e-4, rel=0.05)
    written = json.loads((tmp_path / "fit.json").read_text())
    assert written["pooled"]["fp16"]["steps"] > 100
    assert written["pooled_full_steps"]["fp16"] is None  # no request ever waited in this log
