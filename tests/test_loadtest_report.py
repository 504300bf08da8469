"""Report arithmetic on hand-made request records: SLO attainment, goodput, percentiles, mode shares."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtests.admin import Snapshot
from loadtests.compare import markdown_table, summary_row
from loadtests.modes import ModeTimeline, build_timeline
from loadtests.report import Slo, build_report, meets, percentiles, phase_of
from loadtests.shapes import Phase

T0 = 1_000_000.0
SLO = Slo(ttft=0.5, tpot=0.05)
PHASES = [Phase("base-before", 0, 10), Phase("burst", 10, 20), Phase("base-after", 20, 30)]


def rec(t_sched: float, ttft: float | None = 0.1, tpot: float | None = 0.02, out: int = 4, ok: bool = True,
        replica: str = "r0", mode: str = "fp16", dropped: bool = False, chunk_times: list[float] | None = None) -> dict:
    """A request record like the locustfile writes; chunks spaced by tpot after ttft unless given."""
    if chunk_times is None and ok:
        chunk_times = [ttft + i * (tpot or 0) for i in range(out)]
    return {"idx": 0, "t_sched": t_sched, "lag": 0.0, "t_start": T0 + t_sched, "ok": ok, "dropped": dropped,
            "error": None if ok else ("dropped: cap" if dropped else "HTTP 500: boom"), "ttft": ttft if ok else None,
            "tpot": tpot if ok else None, "e2e": (chunk_times[-1] if ok else None), "output_tokens": out if ok else 0,
            "prompt_tokens": 10 if ok else None, "prompt_tokens_requested": 10, "replica": replica, "mode": mode,
            "chunk_times": chunk_times or []}


def test_percentiles_interpolate_and_ignore_undefined_values() -> None:
    p = percentiles([1, 2, 3, 4, None, 5, 6, 7, 8, 9, 10])
    assert p["p50"] == pytest.approx(5.5)
    assert p["p90"] == pytest.approx(9.1)
    assert p["p99"] == pytest.approx(9.91)
    assert p["n"] == 10
    assert percentiles([None])["p90"] is None


def test_failed_requests_meet_no_slo_and_one_token_outputs_meet_tpot() -> None:
    assert meets(rec(0, ok=False), SLO) == (False, False)
    assert meets(rec(0, ttft=0.6, tpot=None, out=1), SLO) == (False, True)
    assert meets(rec(0, ttft=0.5, tpot=0.05), SLO) == (True, True)  # targets are inclusive
    assert meets(rec(0, ttft=0.1, tpot=0.051), SLO) == (True, False)


def test_attainment_and_goodput_count_errors_and_drops_as_misses() -> None:
    records = [
        rec(1, ttft=0.1, tpot=0.02, out=4),  # meets both
        rec(2, ttft=0.9, tpot=0.02, out=4),  # misses TTFT
        rec(3, ttft=0.1, tpot=0.09, out=6),  # misses TPOT
        rec(4, ok=False),  # server error
        rec(5, ok=False, dropped=True),  # client cap
        rec(12, ttft=0.2, tpot=0.01, out=8),  # burst phase: meets both
    ]
    r = build_report(records, PHASES, 30.0, SLO, ModeTimeline(), T0, T0 + 40)
    b = r["phases"][0]
    assert b["requests"] == {"scheduled": 5, "ok": 3, "errors": 1, "dropped": 1}
    assert b["slo_attainment"] == {"ttft": pytest.approx(2 / 5), "tpot": pytest.approx(2 / 5),
                                   "both": pytest.approx(1 / 5)}
    assert b["goodput"]["requests_per_s"] == pytest.approx(1 / 10)
    assert b["goodput"]["output_tokens_per_s"] == pytest.approx(4 / 10)
    assert b["throughput"]["output_tokens_per_s"] == pytest.approx(14 / 10)
    assert b["ttft"]["p50"] == pytest.approx(0.1) and b["ttft"]["n"] == 3
    assert b["error_kinds"] == {"HTTP 500": 1}
    o = r["overall"]
    assert o["requests"]["scheduled"] == 6
    assert o["slo_attainment"]["both"] == pytest.approx(2 / 6)
    assert o["goodput"]["requests_per_s"] == pytest.approx(2 / 30)
    assert o["tokens"] == {"in": 40, "out": 22}
    assert r["phases"][2]["requests"]["scheduled"] == 0 and r["phases"][2]["slo_attainment"]["both"] is None
    assert r["dispatch"]["dropped"] == 1


def test_tokens_split_by_mode_at_the_replica_switch_time() -> None:
    tl = ModeTimeline(segments={"r0": [(-math.inf, "fp16"), (T0 + 11.0, "fp8")], "r1": [(-math.inf, "fp16")]},
                      source="test")
    records = [
        rec(10.0, out=4, replica="r0", chunk_times=[0.2, 0.6, 1.2, 1.6]),  # 2 tokens before 11 s, 2 after
        rec(10.5, out=2, replica="r1", chunk_times=[0.1, 0.3]),  # r1 stays fp16
    ]
    r = build_report(records, PHASES, 30.0, SLO, tl, T0, T0 + 40)
    assert r["phases"][1]["token_share_by_mode"] == {"fp16": pytest.approx(4 / 6), "fp8": pytest.approx(2 / 6)}
    assert r["phases"][1]["requests_by_modes_served"] == {"fp16": 1, "fp16+fp8": 1}
    assert records[0]["modes_served"] == "fp16+fp8"
    assert r["token_mode_attribution"].startswith("per-token") and r["mode_attribution_fallbacks"] == 0


def test_without_a_timeline_the_start_mode_header_is_used_for_all_tokens() -> None:
    records = [rec(1, out=3, mode="fp8"), rec(2, out=1, mode="fp16")]
    r = build_report(records, PHASES, 30.0, SLO, ModeTimeline(), T0, T0 + 40)
    assert r["overall"]["token_share_by_mode"] == {"fp16": pytest.approx(1 / 4), "fp8": pytest.approx(3 / 4)}
    assert r["token_mode_attribution"].startswith("x-nestedfp-mode") and r["mode_attribution_fallbacks"] == 2


def test_a_replica_missing_from_the_timeline_falls_back_to_its_header_and_is_counted() -> None:
    tl = ModeTimeline(segments={"r0": [(-math.inf, "fp16")]}, source="test")
    records = [rec(1, out=2, replica="r0", mode="fp16"), rec(2, out=2, replica="other", mode="fp8")]
    r = build_report(records, PHASES, 30.0, SLO, tl, T0, T0 + 40)
    assert r["overall"]["token_share_by_mode"] == {"fp16": 0.5, "fp8": 0.5}
    assert r["mode_attribution_fallbacks"] == 1


def test_tokens_after_the_schedule_count_in_the_last_phase() -> None:
    records = [rec(29.9, out=2, chunk_times=[0.05, 5.0])]  # second token arrives during the drain
    r = build_report(records, PHASES, 30.0, SLO, ModeTimeline(), T0, T0 + 40)
    assert sum(r["phases"][2]["token_share_by_mode"].values()) == pytest.approx(1.0)
    assert r["phases"][1]["token_share_by_mode"] == {}


def _state(modes: dict[str, str], switches: list[dict] | None) -> dict:
    s: dict = {"replicas": {rid: {"mode": m} for rid, m in modes.items()}}
    if switches is not None:
        s["switches"] = switches
    return s


def test_timeline_keeps_switches_a_server_dropped_from_its_list_later() -> None:
    s1 = {"time": T0 + 5, "replica": "r0", "from": "fp16", "to": "fp8", "reason": "queue"}
    s2 = {"time": T0 + 9, "replica": "r0", "from": "fp8", "to": "fp16", "reason": "calm"}
    snaps = [Snapshot(T0, _state({"r0": "fp16", "r1": "fp16"}, [])),
             Snapshot(T0 + 6, _state({"r0": "fp8", "r1": "fp16"}, [s1])),
             Snapshot(T0 + 10, _state({"r0": "fp16", "r1": "fp16"}, [s2]))]  # list truncated to the last one
    tl = build_timeline(snaps)
    assert [(s["time"], s["to"]) for s in tl.switches] == [(T0 + 5, "fp8"), (T0 + 9, "fp16")]
    assert [tl.mode_at("r0", T0 + t) for t in (1, 5.5, 9.5)] == ["fp16", "fp8", "fp16"]
    assert tl.mode_at("r1", T0 + 7) == "fp16" and tl.mode_at("nope", T0) is None


def test_timeline_reads_per_replica_switch_lists_and_ignores_switch_counts() -> None:
    sw = {"time": T0 + 2, "replica": "r0", "from": "fp16", "to": "fp8", "reason": "queue"}
    counted = {"replicas": {"r0": {"mode": "fp8", "switches": 1}}, "switches": [sw]}
    listed = {"replicas": {"r0": {"mode": "fp8", "switches": [sw]}}, "switches": []}
    for state in (counted, listed):
        tl = build_timeline([Snapshot(T0 + 3, state)])
        assert [(s["time"], s["to"]) for s in tl.switches] == [(T0 + 2, "fp8")]
        assert tl.mode_at("r0", T0 + 1) == "fp16"


def test_timeline_falls_back_to_poll_differences_without_a_switch_list() -> None:
    snaps = [Snapshot(T0 + t, _state({"r0": m}, None)) for t, m in ((0, "fp16"), (0.5, "fp16"), (1.0, "fp8"))]
    tl = build_timeline(snaps)
    assert [(s["time"], s["from"], s["to"]) for s in tl.switches] == [(T0 + 1.0, "fp16", "fp8")]
    assert "polls" in tl.source


def test_switches_are_reported_relative_to_start_with_their_phase() -> None:
    sw = [{"time": T0 + t, "replica": "r0", "from": a, "to": b, "reason": "x"}
          for t, a, b in ((-3, "fp8", "fp16"), (12, "fp16", "fp8"), (31, "fp8", "fp16"), (50, "fp16", "fp8"))]
    tl = build_timeline([Snapshot(T0 - 5, {"replicas": {"r0": {"mode": "fp8"}}, "switches": sw})])
    r = build_report([], PHASES, 30.0, SLO, tl, T0, T0 + 40)
    assert [(s["t"], s["to"], s["phase"]) for s in r["switches"]] == [(12, "fp8", "burst"), (31, "fp16", "drain")]
    assert r["modes_at_start"] == {"r0": "fp16"}
    assert phase_of(-1, PHASES) == "before-run"


def test_compare_table_has_one_row_per_policy_with_its_numbers() -> None:
    records = [rec(1, ttft=0.1), rec(12, ttft=0.9)]
    rep = build_report(records, PHASES, 30.0, SLO, ModeTimeline(), T0, T0 + 40)
    rows = [summary_row(p, rep) for p in ("fp16", "auto")]
    assert rows[0]["slo_both"] == pytest.approx(0.5) and rows[0]["worst_phase"] == "burst"
    md = markdown_table(rows, rep["slo"], "spike")
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and "static fp16" in lines[1] and "adaptive" in lines[2]
    assert "50.0%" in lines[1]
    assert np.isclose(rows[1]["goodput_rps"], 1 / 30)
