"""Stall finding from the engine-step log: busy gaps only, in windows taken from the run's report."""

import json

from loadtests.step_gaps import Steps, main, run_gaps


def _report(t0, switches=()):
    return {"run": {"label": "adaptive (slo)", "t0": t0, "duration_s": 10.0, "drain_s": 1.0},
            "switches": [{"t": s - t0, "time": s, "to": "fp8"} for s in switches]}


def _steps(times, idle_at=()):
    return Steps([{"t": t, "running": 0 if t in idle_at else 3, "waiting": 0} for t in times])


def test_longest_busy_gap_is_found_inside_the_run_window_only():
    times = [0.0, 50.0] + [100.0 + 0.05 * i for i in range(60)] + [104.0, 105.5, 130.0]
    r = run_gaps(_steps(times), _report(100.0))
    assert r["max_gap_s"] == 1.5 and r["max_gap_at_s"] == 4.0  # 104.0 -> 105.5; not the gaps outside
    assert r["steps"] == 62


def test_a_gap_after_an_idle_record_is_not_a_stall():
    times = [100.0 + 0.05 * i for i in range(60)] + [104.0, 105.5]
    r = run_gaps(_steps(times, idle_at={104.0}), _report(100.0))
    assert r["max_gap_s"] == 1.05  # 102.95 -> 104.0 was busy; 104.0 -> 105.5 began idle


def test_switch_windows_report_their_own_gap():
    times = [100.0 + 0.05 * i for i in range(240)] + [112.0, 113.0]
    r = run_gaps(_steps(times), _report(100.0, switches=[103.0, 111.5]))
    assert [s["max_gap_s"] for s in r["switches"]] == [0.05, 1.0]


def test_fewer_than_two_records_have_no_gap():
    assert _steps([5.0]).max_gap(0.0, 10.0) == (0.0, None)


def test_cli_reads_a_step_log_and_reports(tmp_path, capsys):
    steps = tmp_path / "steps.jsonl"
    steps.write_text("".join(json.dumps({"t": 100.0 + 0.1 * i, "running": 1, "waiting": 0}) + "\n" for i in range(50)))
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(_report(100.0, switches=[102.0])))
    out = tmp_path / "gaps.json"
    assert main(["--steps", str(steps), str(rep), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res[0]["steps"] == 50 and abs(res[0]["max_gap_s"] - 0.1) < 1e-9
    assert "50 steps" in capsys.readouterr().out


def test_a_gzipped_step_log_reads_the_same(tmp_path):
    import gzip

    lines = "".join(json.dumps({"t": 10.0 + i, "running": 1}) + "\n" for i in range(3))
    (tmp_path / "s.jsonl").write_text(lines)
    with gzip.open(tmp_path / "s.jsonl.gz", "wt") as f:
        f.write(lines)
    a, b = Steps.load(tmp_path / "s.jsonl.gz"), Steps.load(tmp_path / "s.jsonl")
    assert a.count(0, 100) == b.count(0, 100) == 3 and a.max_gap(0, 100) == b.max_gap(0, 100) == (1.0, 11.0)


def test_one_replica_stalling_shows_although_another_keeps_stepping():
    fast = [{"t": 100.0 + 0.05 * i, "pid": 1, "running": 2} for i in range(100)]
    stalled = [{"t": t, "pid": 2, "running": 2} for t in (100.0, 100.1, 102.6, 102.7)]
    steps = Steps(fast + stalled)
    assert steps.max_gap(99.0, 110.0) == (2.5, 100.1)
    assert steps.count(99.0, 110.0) == 104
