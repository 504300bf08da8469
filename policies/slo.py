"""Latency SLO: fp8 when observed or predicted p90 TTFT/TPOT nears its target, fp16 with headroom.

Pressure is the worst ``p90 / target`` over the configured targets. The prediction extrapolates
the recent p90 trend ``predict_s`` ahead (least squares over ``trend_window`` samples, rising
trends only), so a burst flips the replica before the target is missed rather than after.

``headroom_down`` must sit well below ``headroom_up`` divided by the fp8 speed-up: latencies seen
in fp8 are ~1.5x lower than fp16 would give, so returning at 0.5 lands near 0.75 of the target in
fp16, under the 0.9 that would send it straight back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from policies.base import Policy, dwell, hysteresis
from policies.signals import Decision, Mode, ReplicaStats


@dataclass(frozen=True)
class SLOPolicy(Policy):
    ttft_s: Optional[float] = None  # p90 time-to-first-token target
    tpot_s: Optional[float] = None  # p90 time-per-output-token target
    headroom_up: float = 0.9  # fp8 at this fraction of a target
    headroom_down: float = 0.5  # fp16 again at this fraction
    min_dwell_s: float = 5.0
    predict_s: float = 1.0  # prediction horizon; 0 uses observations only
    trend_window: int = 5
    # The prediction counts only while the observed ratio is at least this. Why: under long prompts the
    # step signal's p90 can jump between its decode-only and prefill-step levels at a steady load, and the
    # trend reads the jump as a climb (docs/BENCHMARKS.md, "Why the slo policy switches at base load").
    # 0 (the default, as in every H200 run so far) trusts every prediction.
    predict_min_ratio: float = 0.0
    # "step": p90 of per-token inter-token latencies (reacts within a step; its tail is the steps that
    # carry prefill chunks, so it reads above a per-request TPOT SLO's measure under long prompts).
    # "request": p90 of finished requests' mean TPOT, what a per-request TPOT SLO measures (lags by
    # a request's lifetime). The H200 runs in docs/BENCHMARKS.md used "step".
    tpot_signal: str = "step"

    name = "slo"

    def __post_init__(self) -> None:
        if self.ttft_s is None and self.tpot_s is None:
            raise ValueError("slo needs at least one of ttft_s, tpot_s")
        if any(t is not None and t <= 0 for t in (self.ttft_s, self.tpot_s)):
            raise ValueError("slo targets must be > 0")
        if not 0 < self.headroom_down < self.headroom_up:
            raise ValueError("slo needs 0 < headroom_down < headroom_up")
        if self.tpot_signal not in _TPOT_FIELDS:
            raise ValueError(f"slo tpot_signal must be one of {sorted(_TPOT_FIELDS)}, got {self.tpot_signal!r}")
        if self.min_dwell_s < 0 or self.predict_s < 0 or self.trend_window < 2:
            raise ValueError("slo needs min_dwell_s >= 0, predict_s >= 0, trend_window >= 2")
        if not 0 <= self.predict_min_ratio < self.headroom_up:
            raise ValueError("slo needs 0 <= predict_min_ratio < headroom_up")

    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision:
        worst: tuple[float, str] | None = None
        for field, target in (("ttft_p90", self.ttft_s), (_TPOT_FIELDS[self.tpot_signal], self.tpot_s)):
            if target is None or getattr(history[-1], field) is None:
                continue
            observed = getattr(history[-1], field)
            predicted = observed + max(0.0, _slope(history[-self.trend_window :], field)) * self.predict_s
            ratio, what = observed / target, f"{field}/target"
            if predicted / target > ratio >= self.predict_min_ratio:
                ratio, what = predicted / target, f"{field}/target predicted {self.predict_s:g}s ahead"
            if worst is None or ratio > worst[0]:
                worst = (ratio, what)
        if worst is None:
            last = history[-1]
            if current == "fp8" and last.num_waiting == 0 and last.num_running == 0:
                return dwell(current, "fp16", "idle (no latency samples)", seconds_in_mode, self.min_dwell_s)
            return Decision(current, "no latency samples")
        return hysteresis(
            current, worst[0], high=self.headroom_up, low=self.headroom_down,
            seconds_in_mode=seconds_in_mode, min_dwell_s=self.min_dwell_s, what=worst[1],
        )


_TPOT_FIELDS = {"step": "tpot_p90", "request": "req_tpot_p90"}


def _slope(samples: Sequence[ReplicaStats], field: str) -> float:
    """Least-squares slope of ``field`` against report time (per second); 0 without a trend."""
    pts = [(s.timestamp, getattr(s, field)) for s in samples if getattr(s, field) is not None]
    if len(pts) < 2:
        return 0.0
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in pts) / var
