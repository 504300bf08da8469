"""fp16's busy fraction at the offered load: fp8 while fp16 would have too little time to spare.

Why not latency: in fp8 a replica's latencies say how fp8 copes, not whether fp16 would hold, so a
latency policy returns to fp16 on a guess and finds out (docs/BENCHMARKS.md, "The Azure trace on today's
code..."). Token rates say it directly: while the replica keeps up, it processes the prompt and output
tokens that arrive, whatever its mode. ``busy = prompt/s x s_per_prompt_token + output/s x s_per_output_token``
weighs them with per-token costs fitted once per model and GPU from fp16 step times
(``python -m loadtests.step_cost``), so it reads as the share of each second fp16 would be busy. It is a
calibrated load index rather than a physical share: vLLM counts a prompt's tokens in the step that finishes
its prefill, so the fit gives prompt tokens too little of the cost and output tokens the rest. The thresholds
were set against measured runs, not derived.

An overloaded fp16 replica still leaves: its rates are then fp16's own throughput, whose busy fraction
sits near the ceiling, above ``high``.
The defaults are for Llama-3.1-8B on one H200 with vLLM 0.25: the costs fitted from static-fp16 step logs at a
2048-token step budget (docs/BENCHMARKS.md, "fp16_load"), the thresholds measured on the Azure trace at the
1792-token budget that ``docs/gpu/app_up.sh`` uses ("A 1792-token step budget"). Another model, GPU or budget
needs its own fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.base import Policy, hysteresis
from policies.signals import Decision, Mode, ReplicaStats


@dataclass(frozen=True)
class Fp16LoadPolicy(Policy):
    s_per_prompt_token: float = 9.5e-6  # fp16 seconds per prompt (prefill) token
    s_per_output_token: float = 3.2e-4  # fp16 seconds per generated token (weights + attention over its context)
    high: float = 0.82  # fp8 once fp16 would be this busy
    low: float = 0.74  # fp16 again at this
    window_s: float = 3.0  # span the rates are taken over
    min_dwell_s: float = 3.0

    name = "fp16_load"

    def __post_init__(self) -> None:
        if self.s_per_prompt_token < 0 or self.s_per_output_token < 0 or not (
            self.s_per_prompt_token or self.s_per_output_token
        ):
            raise ValueError("fp16_load needs per-token costs >= 0, not both 0")
        if not 0 < self.low < self.high:
            raise ValueError(f"fp16_load needs 0 < low < high, got low={self.low}, high={self.high}")
        if self.window_s <= 0 or self.min_dwell_s < 0:
            raise ValueError("fp16_load needs window_s > 0 and min_dwell_s >= 0")

    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision:
        rates = token_rates(history, self.window_s)
        if rates is None:
            return Decision(current, "token rates unknown (no two reports of one replica's counters yet)")
        prompt_rate, output_rate = rates
        busy = prompt_rate * self.s_per_prompt_token + output_rate * self.s_per_output_token
        return hysteresis(
            current, busy, high=self.high, low=self.low,
            seconds_in_mode=seconds_in_mode, min_dwell_s=self.min_dwell_s, what="fp16 busy fraction",
        )


def token_rates(history: Sequence[ReplicaStats], window_s: float) -> tuple[float, float] | None:
    """(prompt, output) tokens per second over the last ``window_s`` of ``history``, from its counters.

    The span starts at the newest sample at least ``window_s`` old, or the oldest there is. None without
    two samples apart in time, or when a counter went back (a restarted engine under the same id).
    """
    last = history[-1]
    first = history[0]
    for s in reversed(history[:-1]):
        first = s
        if s.timestamp <= last.timestamp - window_s:
            break
    span = last.timestamp - first.timestamp
    dp = last.prompt_tokens_total - first.prompt_tokens_total
    do = last.output_tokens_total - first.output_tokens_total
    if span <= 0 or dp < 0 or do < 0:
        return None
    return dp / span, do / span
