"""Offline policy replay on the controller's signal log: it recomputes exactly what the controller decided."""

from __future__ import annotations

import asyncio
import json

import pytest

from loadtests.policy_replay import main, replay
from policies.controller import PrecisionController
from policies.registry import build_policy
from policies.signals import ReplicaStats


def _samples(n: int = 100) -> list[dict]:
    """One replica reporting every 0.2 s (at x.x1 s): a queue that builds up, holds, then drains."""
    out = []
    for j in range(n):
        waiting = 0 if j < 20 else 12 if j < 50 else 0
        out.append(ReplicaStats(replica_id="r0", mode="fp16", num_waiting=waiting, num_running=4,
                                timestamp=1000.0 + 0.2 * j + 0.01).to_dict())
    return out


def _controller_switches(samples: list[dict], policy, log_path) -> list[dict]:
    """Drive a controller on a fake clock: every sample reported at its time, ticks every 0.25 s."""
    clock = {"now": 1000.0}
    c = PrecisionController(policy, clock=lambda: clock["now"], signal_log=str(log_path))

    async def go():
        await c.mode_for("r0")
        events = [(s["timestamp"], 0, s) for s in samples] + [(1000.0 + 0.25 * k, 1, None) for k in range(81)]
        for t, kind, s in sorted(events, key=lambda e: (e[0], e[1])):
            clock["now"] = t
            if kind == 0:
                await c.report(s)
            else:
                c.tick()

    asyncio.run(go())
    return c.status()["switches"]


def test_the_controller_logs_every_sample_it_receives(tmp_path):
    samples = _samples(10)
    _controller_switches(samples, build_policy("static_fp16"), tmp_path / "signals.jsonl")
    logged = [json.loads(line) for line in (tmp_path / "signals.jsonl").read_text().splitlines()]
    assert logged == samples


def test_replay_makes_the_controllers_switches_at_the_same_ticks(tmp_path):
    policy = build_policy("queue_depth", {"high": 8, "low": 2, "min_dwell_s": 1.0, "window": 2})
    samples = _samples()
    live = _controller_switches(samples, policy, tmp_path / "signals.jsonl")
    assert [s["to"] for s in live] == ["fp8", "fp16"]  # the queue built up, then drained
    logged = [json.loads(line) for line in (tmp_path / "signals.jsonl").read_text().splitlines()]
    replayed = replay(logged, policy, 1000.0, 1020.0)["r0"]
    assert [(s["time"], s["to"], s["reason"]) for s in replayed] == [(s["time"], s["to"], s["reason"]) for s in live]


def test_cli_replays_another_policy_over_a_runs_window(tmp_path, capsys):
    log = tmp_path / "signals.jsonl"
    log.write_text("\n".join(json.dumps(s) for s in _samples()))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"run": {"label": "static fp16", "t0": 1000.0, "duration_s": 20.0, "drain_s": 0.0,
                                          "phases": [{"name": "base", "start": 0.0, "end": 4.0},
                                                     {"name": "burst", "start": 4.0, "end": 10.0},
                                                     {"name": "after", "start": 10.0, "end": 20.0}]}}))
    out = tmp_path / "replay.json"
    assert main(["--signals", str(log), str(report), "--policy", "queue_depth", "--params",
                 '{"high": 8, "low": 2, "min_dwell_s": 1.0, "window": 2}', "--out", str(out)]) == 0
    assert "static fp16: replica r0: 1 switches to fp8: 4.2 s (burst)" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["replicas"]["r0"][0]["phase"] == "burst"


def test_cli_refuses_an_unknown_policy(tmp_path, capsys):
    log = tmp_path / "signals.jsonl"
    log.write_text("")
    with pytest.raises(SystemExit) as e:
        main(["--signals", str(log), str(tmp_path / "report.json"), "--policy", "nope"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
