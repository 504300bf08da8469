"""The published NestedFP rule: fp8 when the tokens scheduled per step exceed half the step budget.

Past that point a step is compute-bound and the fp8 GEMMs pay off; below it the step is
memory-bound and fp16 costs little. The rule has no band of its own, so only the dwell (and the
averaging window) keep it from flapping around the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from policies.base import Policy, dwell, window_mean
from policies.signals import Decision, Mode, ReplicaStats


@dataclass(frozen=True)
class TokenBudgetPolicy(Policy):
    threshold: float = 0.5  # fraction of max_num_batched_tokens
    min_dwell_s: float = 2.0
    window: int = 1  # samples averaged; each sample is already a mean over the replica's window

    name = "token_budget"

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"token_budget needs 0 < threshold <= 1, got {self.threshold}")
        if self.min_dwell_s < 0 or self.window < 1:
            raise ValueError("token_budget needs min_dwell_s >= 0 and window >= 1")

    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision:
        budget = history[-1].max_num_batched_tokens
        if budget <= 0:
            return Decision(current, "step budget unknown (max_num_batched_tokens=0)")
        tokens = window_mean(history, self.window, lambda s: s.scheduled_tokens_per_step)
        frac = tokens / budget
        if frac > self.threshold:
            want: Mode = "fp8"
            why = f"scheduled tokens/step {tokens:.0f} > {self.threshold:g} x {budget}"
        else:
            want = "fp16"
            why = f"scheduled tokens/step {tokens:.0f} <= {self.threshold:g} x {budget}"
        return dwell(current, want, why, seconds_in_mode, self.min_dwell_s)
