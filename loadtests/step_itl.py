"""The step-TPOT signal rebuilt from the engine-step log, to find where its percentile jumps.

Why: the ``slo`` policy's default TPOT signal is a percentile (p90) of every token's inter-token latency
over the replica's stats window (``deployments.engine_stats``, 10 s). Under long prompts that
distribution has two modes, decode-only steps and steps that carry a prefill chunk, and its p90 can sit
on the gap between them: a small shift in the mix then moves it from one mode to the other within a
second, and the policy's trend extrapolation reads the jump as a climb (docs/BENCHMARKS.md, "Why the
slo policy switches at base load"). This rebuilds the signal from a run's step log
(``NESTEDFP_STEP_LOG``), per replica process, and lists the jumps. Approximation: the log keeps each
step's largest inter-token latency and its token count, so every token of a step gets the largest.

    python -m loadtests.step_itl --steps steps.jsonl.gz report.json [--q 0.9] [--out itl.json]
"""

from __future__ import annotations

import argparse
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from loadtests.jsonl import read_jsonl
from loadtests.offline import by_process, per_report

WINDOW_S = 10.0  # deployments.engine_stats.WINDOW_S (not imported: this runs without the app's packages)
REPORT_EVERY_S = 0.2  # how often a replica reports (policies.agent)


def signal(records: Sequence[dict[str, Any]], start: float, end: float, q: float = 0.9,
           window_s: float = WINDOW_S, every_s: float = REPORT_EVERY_S) -> dict[Any, list[tuple[float, float | None]]]:
    """Per ``pid``: (time, q-percentile of per-token ITL over the trailing window) every ``every_s``."""
    decoding = (r for r in records if r.get("itl_max") is not None and r.get("gen_tokens", 0) > 0)
    out = {}
    for pid, recs in by_process(decoding).items():
        rows = [(r["t"], r["itl_max"], r["gen_tokens"]) for r in recs]
        times = [t for t, _, _ in rows]
        series = []
        n = int((end - start) / every_s) + 1
        for k in range(n):
            now = start + k * every_s
            win = rows[bisect_left(times, now - window_s):bisect_right(times, now)]
            series.append((now, _weighted_quantile([(itl, w) for _, itl, w in win], q)))
        out[pid] = series
    return out


def _weighted_quantile(values: list[tuple[float, int]], q: float) -> float | None:
    """The percentile as the replica's stats window takes it (``engine_stats._percentile``: nearest rank
    ``round(q * (count - 1))``) of the multiset where each value appears ``weight`` times."""
    total = sum(w for _, w in values)
    if not total:
        return None
    rank, seen = min(total - 1, int(q * (total - 1) + 0.5)), 0
    for v, w in sorted(values):
        seen += w
        if seen > rank:
            return v
    return values[-1][0]


def jumps(series: Sequence[tuple[float, float | None]], factor: float = 2.0,
          within_s: float = 1.0) -> list[dict[str, float]]:
    """Times where the signal reached ``factor`` times its lowest value of the previous ``within_s``
    (one entry per rise: the next is counted only ``within_s`` later)."""
    times = [t for t, _ in series]
    found: list[dict[str, float]] = []
    for i, (t, v) in enumerate(series):
        earlier = [(t0, v0) for t0, v0 in series[bisect_left(times, t - within_s - 1e-9):i] if v0]
        if v is None or not earlier or (found and t - found[-1]["t"] <= within_s):
            continue
        t0, low = min(earlier, key=lambda p: p[1])
        if v >= factor * low:
            found.append({"t": t, "from_ms": low * 1e3, "to_ms": v * 1e3, "over_s": t - t0})
    return found


def run_signal(records: Sequence[dict[str, Any]], report: dict[str, Any], q: float = 0.9) -> dict[str, Any]:
    """The signal and its jumps over a run's window, times relative to the run's start."""
    run = report["run"]
    t0 = run["t0"]
    end = t0 + run["duration_s"] + run.get("drain_s", 0.0)
    out: dict[str, Any] = {"label": run.get("label"), "q": q, "replicas": {}}
    for pid, series in signal(records, t0, end, q).items():
        rel = [(round(t - t0, 2), v) for t, v in series]
        out["replicas"][str(pid)] = {"jumps": [dict(j, t=round(j["t"], 2)) for j in jumps(rel)],
                                     "series_ms": [(t, None if v is None else round(v * 1e3, 2)) for t, v in rel]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", required=True, help="the step log (JSON lines, may be .gz)")
    ap.add_argument("reports", nargs="+", help="report.json of each run to look at")
    ap.add_argument("--q", type=float, default=0.9, help="the percentile (the slo policy reads p90)")
    ap.add_argument("--out", help="write every run's signal and jumps here as JSON")
    args = ap.parse_args(argv)
    records = read_jsonl(args.steps)

    def lines(r: dict[str, Any]) -> list[str]:
        return [f"{r['label']}: pid {pid}: {len(rep['jumps'])} jumps of 2x or more within 1 s: "
                + (", ".join(f"{j['t']:.1f} s ({j['from_ms']:.1f} -> {j['to_ms']:.1f} ms)" for j in rep["jumps"])
                   or "-") for pid, rep in r["replicas"].items()]

    per_report(args.reports, lambda rep: run_signal(records, rep, args.q), lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
