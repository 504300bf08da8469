"""The step-TPOT signal rebuilt from a step log: token-weighted window percentiles, and its jumps."""

import json

from loadtests.step_itl import _weighted_quantile, jumps, main, signal


def test_weighted_quantile_counts_each_value_by_its_tokens():
    assert _weighted_quantile([(0.028, 11), (0.007, 89)], 0.9) == 0.028  # nearest rank 89 of 0..99
    assert _weighted_quantile([(0.007, 90), (0.028, 10)], 0.9) == 0.007
    assert _weighted_quantile([], 0.9) is None


def _log(slow_share_by_second, steps_per_s=20, tokens=100, pid=1):
    """Decode-only steps (7 ms) and prefill-carrying steps (28 ms); per second, the given share of slow steps."""
    recs = []
    for sec, share in enumerate(slow_share_by_second):
        slow = round(share * steps_per_s)
        for i in range(steps_per_s):
            recs.append({"t": sec + i / steps_per_s, "pid": pid, "gen_tokens": tokens,
                         "itl_max": 0.028 if i < slow else 0.007})
    return recs


def test_the_p90_moves_between_modes_when_the_slow_share_crosses_ten_percent():
    recs = _log([0.05] * 10 + [0.15] * 10)
    series = signal(recs, 0.0, 20.0, q=0.9, window_s=3.0, every_s=0.2)[1]
    values = {round(t, 1): v for t, v in series}
    assert values[9.8] == 0.007 and values[19.8] == 0.028  # one mode, then the other
    found = jumps(series)
    assert len(found) == 1 and 10.0 <= found[0]["t"] <= 12.0 and found[0]["to_ms"] == 28.0


def test_a_gradual_rise_is_not_a_jump():
    recs = [{"t": i / 20, "pid": 1, "gen_tokens": 10, "itl_max": 0.010 * (1 + 0.05 * (i / 20))} for i in range(400)]
    assert jumps(signal(recs, 0.0, 20.0, window_s=1.0)[1]) == []  # 1.5x over 10 s


def test_cli_reports_jumps_per_replica_over_the_run_window(tmp_path, capsys):
    recs = _log([0.05] * 10 + [0.15] * 10, pid=7)
    steps = tmp_path / "steps.jsonl"
    steps.write_text("\n".join(json.dumps(r) for r in recs))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"run": {"label": "static fp16", "t0": 0.0, "duration_s": 20.0, "drain_s": 0.0}}))
    out = tmp_path / "itl.json"
    assert main(["--steps", str(steps), str(report), "--out", str(out)]) == 0
    assert "static fp16: pid 7: 1 jumps" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert len(saved[0]["replicas"]["7"]["jumps"]) == 1
