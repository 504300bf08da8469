"""Engine stalls during a load test: gaps between engine-step records (``NESTEDFP_STEP_LOG``).

Why: a stall of a second (a kernel compiled on first use, a blocking call) shows in per-request
latencies only as a smear; in the step log it is one long gap between consecutive records while
the engine had work (a gap after a record with nothing running or waiting is idle time, not a
stall). The windows come from a run's ``report.json``: the run, and a few seconds around each switch.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any, Sequence

from loadtests.jsonl import read_jsonl
from loadtests.offline import by_process, per_report, step_log_parser


class Steps:
    """A step log's record times (sorted) and whether the engine had work at each record, per replica
    process (``pid``): replicas sharing one log interleave, and one replica's stall is still a stall."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self._sources = [_Source([(r["t"], r.get("running", 0) + r.get("waiting", 0) > 0) for r in rows])
                         for rows in by_process(records).values()]

    @classmethod
    def load(cls, path: str | Path) -> "Steps":
        return cls(read_jsonl(path))

    def max_gap(self, start: float, end: float) -> tuple[float, float | None]:
        """(longest gap inside [start, end] that began at a busy record, when it began); (0, None) if none."""
        return max((s.max_gap(start, end) for s in self._sources), default=(0.0, None))

    def count(self, start: float, end: float) -> int:
        return sum(s.count(start, end) for s in self._sources)


class _Source:
    """One replica process's records."""

    def __init__(self, rows: list[tuple[float, bool]]) -> None:
        self.times = [t for t, _ in rows]
        self.busy = [b for _, b in rows]

    def max_gap(self, start: float, end: float) -> tuple[float, float | None]:
        lo, hi = bisect_left(self.times, start), bisect_right(self.times, end)
        gaps = [(self.times[i + 1] - self.times[i], self.times[i]) for i in range(lo, hi - 1) if self.busy[i]]
        return max(gaps) if gaps else (0.0, None)

    def count(self, start: float, end: float) -> int:
        return bisect_right(self.times, end) - bisect_left(self.times, start)


def run_gaps(steps: Steps, report: dict[str, Any], before_s: float = 2.0,
             after_s: float = 3.0) -> dict[str, Any]:
    """Step count and longest gap over one run, and around each of its switches (seconds since the run's t0)."""
    run = report["run"]
    t0 = run["t0"]
    end = t0 + run["duration_s"] + (run.get("drain_s") or 0.0)
    gap, at = steps.max_gap(t0, end)
    switches = []
    for s in report.get("switches", []):
        g, _ = steps.max_gap(s["time"] - before_s, s["time"] + after_s)
        switches.append({"t": round(s["t"], 2), "to": s["to"], "max_gap_s": round(g, 4)})
    return {
        "label": run.get("label"),
        "steps": steps.count(t0, end),
        "max_gap_s": round(gap, 4),
        "max_gap_at_s": None if at is None else round(at - t0, 2),
        "switch_window_s": [-before_s, after_s],
        "switches": switches,
    }


def main(argv: list[str] | None = None) -> int:
    a = step_log_parser("python -m loadtests.step_gaps", __doc__, "report.json of each run to check",
                        "also write the results here as JSON").parse_args(argv)
    steps = Steps.load(a.steps)

    def lines(r: dict[str, Any]) -> list[str]:
        sw = max((s["max_gap_s"] for s in r["switches"]), default=None)
        return [(f"{r['label']}: {r['steps']} steps, longest busy gap {r['max_gap_s'] * 1e3:.0f} ms "
                 f"at {r['max_gap_at_s']} s; {len(r['switches'])} switches, longest gap around one "
                 f"{'-' if sw is None else f'{sw * 1e3:.0f} ms'}")]

    per_report(a.reports, lambda rep: run_gaps(steps, rep), lines, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
