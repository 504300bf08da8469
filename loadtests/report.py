"""Report arithmetic: per-phase and overall SLO attainment, goodput, latency percentiles, mode shares.

Pure functions of the recorded requests, the phases and the mode timeline, so they can be tested on
hand-made samples. DEFINITIONS says exactly what every number means; it is copied into report.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from loadtests.modes import ModeTimeline
from loadtests.shapes import Phase

DEFINITIONS = {
    "phase_membership": "a request belongs to the phase in which it was scheduled to arrive",
    "rates": "per second of the phase window (overall: the schedule duration); drain time is not added",
    "ttft": "seconds from sending the request to the first chunk carrying output text",
    "tpot": "(last token time - first token time) / (output tokens - 1); undefined for 1-token outputs",
    "e2e": "seconds from sending the request to the end of the stream",
    "percentiles": "numpy linear interpolation over successful requests",
    "slo_attainment": "share of the phase's scheduled requests meeting the target; failed and "
                      "client-dropped requests count as misses; an undefined TPOT counts as met",
    "goodput": "requests (and their output tokens) per second that succeeded and met both targets",
    "token_share_by_mode": "output tokens by the mode of their replica at the time each token arrived "
                           "(per-replica switch timeline from /admin/precision); without a timeline, "
                           "the x-nestedfp-mode header (mode at request start) is used for all its tokens; "
                           "tokens are counted in the phase window in which they arrived",
    "dropped": "requests the load generator did not send because its concurrency cap was reached",
    "offered_rps": "scheduled requests of the phase per second of its window",
    "requests_by_start_mode": "successful requests by the x-nestedfp-mode response header",
    "requests_by_modes_served": "successful requests by the mode(s) their tokens were attributed to",
    "mode_attribution_fallbacks": "successful requests whose x-nestedfp-replica is missing from the switch "
                                  "timeline, so the start-mode header was used for all their tokens",
}


@dataclass(frozen=True)
class Slo:
    ttft: float  # seconds
    tpot: float  # seconds per output token


def percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    """p50/p90/p99 and mean of the defined values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(v.mean()), "n": int(v.size)}


def meets(rec: dict, slo: Slo) -> tuple[bool, bool]:
    """(TTFT met, TPOT met) for one request; failures meet neither."""
    if not rec.get("ok"):
        return False, False
    ttft_ok = rec.get("ttft") is not None and rec["ttft"] <= slo.ttft
    tpot_ok = rec.get("tpot") is None or rec["tpot"] <= slo.tpot
    return ttft_ok, tpot_ok


def token_events(rec: dict, timeline: ModeTimeline) -> list[tuple[float, str, float]]:
    """(unix time, mode, tokens) per text chunk of a successful request; tokens spread evenly over chunks."""
    chunks = rec.get("chunk_times") or []
    if not rec.get("ok") or not chunks or not rec.get("output_tokens"):
        return []
    per_chunk = rec["output_tokens"] / len(chunks)
    use_timeline = rec.get("replica") in timeline.segments
    out = []
    for dt in chunks:
        t = rec["t_start"] + dt
        mode = timeline.mode_at(rec["replica"], t) if use_timeline else rec.get("mode")
        out.append((t, mode or "unknown", per_chunk))
    return out


def modes_served(rec: dict, timeline: ModeTimeline) -> str | None:
    """The mode(s) a request's tokens were produced in, e.g. "fp16" or "fp16+fp8"; None without tokens."""
    modes = sorted({m for _, m, _ in token_events(rec, timeline)})
    return "+".join(modes) or None


@dataclass(frozen=True)
class TokenEvents:
    """All output tokens of a run: time after t0, mode, token count (one entry per chunk)."""

    t: np.ndarray
    mode: np.ndarray
    tokens: np.ndarray

    @classmethod
    def of(cls, records: Sequence[dict], timeline: ModeTimeline, t0: float) -> "TokenEvents":
        ev = [e for r in records for e in token_events(r, timeline)]
        return cls(np.asarray([e[0] - t0 for e in ev], dtype=float), np.asarray([e[1] for e in ev], dtype=object),
                   np.asarray([e[2] for e in ev], dtype=float))

    def shares(self, lo: float, hi: float) -> dict[str, float]:
        """Share of tokens per mode among those arriving in [lo, hi) seconds after t0."""
        sel = (self.t >= lo) & (self.t < hi)
        total = float(self.tokens[sel].sum())
        if total <= 0:
            return {}
        return {str(m): float(self.tokens[sel & (self.mode == m)].sum()) / total
                for m in sorted(set(self.mode[sel]))}


def _rate(x: float, length: float) -> float | None:
    return x / length if length > 0 else None


def summarize(records: Sequence[dict], name: str, start: float, end: float, slo: Slo, tokens: TokenEvents,
              token_window: tuple[float, float]) -> dict:
    """Metrics of the requests scheduled in [start, end) (seconds after t0); token shares over ``token_window``."""
    mine = [r for r in records if start <= r["t_sched"] < end]
    ok = [r for r in mine if r.get("ok")]
    dropped = [r for r in mine if r.get("dropped")]
    errors = [r for r in mine if not r.get("ok") and not r.get("dropped")]
    met = [meets(r, slo) for r in mine]
    both = [r for r, (a, b) in zip(mine, met) if a and b]
    length = end - start
    n = len(mine)
    start_modes: dict[str, int] = {}
    served: dict[str, int] = {}
    for r in ok:
        m, s = r.get("mode") or "unknown", r.get("modes_served") or "unknown"
        start_modes[m] = start_modes.get(m, 0) + 1
        served[s] = served.get(s, 0) + 1
    error_kinds: dict[str, int] = {}
    for r in errors:
        kind = (r.get("error") or "unknown").split(":")[0]
        error_kinds[kind] = error_kinds.get(kind, 0) + 1
    return {
        "name": name, "start": start, "end": end,
        "requests": {"scheduled": n, "ok": len(ok), "errors": len(errors), "dropped": len(dropped)},
        "error_kinds": error_kinds,
        "offered_rps": _rate(n, length),
        "ttft": percentiles(r.get("ttft") for r in ok),
        "tpot": percentiles(r.get("tpot") for r in ok),
        "e2e": percentiles(r.get("e2e") for r in ok),
        "slo_attainment": {
            "ttft": sum(a for a, _ in met) / n if n else None,
            "tpot": sum(b for _, b in met) / n if n else None,
            "both": len(both) / n if n else None,
        },
        "goodput": {"requests_per_s": _rate(len(both), length),
                    "output_tokens_per_s": _rate(sum(r["output_tokens"] for r in both), length)},
        "throughput": {"requests_per_s": _rate(len(ok), length),
                       "output_tokens_per_s": _rate(sum(r["output_tokens"] for r in ok), length)},
        "tokens": {"in": sum(r.get("prompt_tokens") or r.get("prompt_tokens_requested") or 0 for r in ok),
                   "out": sum(r["output_tokens"] for r in ok)},
        "token_share_by_mode": tokens.shares(*token_window),
        "requests_by_start_mode": dict(sorted(start_modes.items())),
        "requests_by_modes_served": dict(sorted(served.items())),
    }


def phase_of(t: float, phases: Sequence[Phase]) -> str:
    """Name of the phase containing ``t`` (seconds after start); before/after the schedule are named so."""
    if t < 0:
        return "before-run"
    for p in phases:
        if p.start <= t < p.end:
            return p.name
    return "drain"


def run_switches(timeline: ModeTimeline, t0: float, t_end: float, phases: Sequence[Phase]) -> list[dict]:
    """Switches during the run, with times relative to ``t0`` and the phase they fell in."""
    return [{"t": s["time"] - t0, "time": s["time"], "replica": s["replica"], "from": s["from"], "to": s["to"],
             "reason": s.get("reason"), "phase": phase_of(s["time"] - t0, phases)}
            for s in timeline.switches if t0 <= s["time"] <= t_end]


def build_report(records: Sequence[dict], phases: Sequence[Phase], duration: float, slo: Slo,
                 timeline: ModeTimeline, t0: float, t_end: float) -> dict:
    """Per-phase and overall metrics plus the run's mode switches; sets each record's "modes_served"."""
    for r in records:
        r["modes_served"] = modes_served(r, timeline)
    tokens = TokenEvents.of(records, timeline, t0)
    bounds = [p.start for p in phases[1:]] + [math.inf]
    out_phases = [summarize(records, p.name, p.start, p.end, slo, tokens,
                            (-math.inf if i == 0 else p.start, bounds[i]))
                  for i, p in enumerate(phases)]
    overall = summarize(records, "overall", 0.0, duration, slo, tokens, (-math.inf, math.inf))
    lags = [r["lag"] for r in records if not r.get("dropped") and r.get("lag") is not None]
    attribution = ("per-token by replica switch timeline" if timeline.segments
                   else "x-nestedfp-mode header (mode at request start)")
    fallbacks = sum(1 for r in records if r.get("ok") and r.get("replica") not in timeline.segments)
    return {
        "slo": {"ttft_s": slo.ttft, "tpot_s": slo.tpot},
        "overall": overall,
        "phases": out_phases,
        "switches": run_switches(timeline, t0, t_end, phases),
        "modes_at_start": {rid: timeline.mode_at(rid, t0) for rid in timeline.segments},
        "mode_source": timeline.source,
        "token_mode_attribution": attribution,
        "mode_attribution_fallbacks": fallbacks,
        "dispatch": {"lag_s": percentiles(lags), "dropped": sum(1 for r in records if r.get("dropped"))},
        "definitions": DEFINITIONS,
    }
