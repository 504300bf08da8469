"""Queue depth with hysteresis and a minimum dwell.

The signal is ``num_waiting`` (requests admitted but not yet scheduled), averaged over the last
``window`` samples. Waiting requests are the direct sign that the replica cannot keep up: a full
running batch with an empty queue is a replica working well, so ``num_running`` counts only when
``include_running`` is set (useful when max_num_seqs is large and the queue rarely forms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from policies.base import Policy, hysteresis, window_mean
from policies.signals import Decision, Mode, ReplicaStats


@dataclass(frozen=True)
class QueueDepthPolicy(Policy):
    high: float = 8.0  # fp8 when the mean queue reaches this
    low: float = 2.0  # fp16 when it falls to this
    min_dwell_s: float = 5.0
    window: int = 4  # samples averaged (4 x 200 ms reports)
    include_running: bool = False

    name = "queue_depth"

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError(f"queue_depth needs 0 <= low < high, got low={self.low}, high={self.high}")
        if self.min_dwell_s < 0 or self.window < 1:
            raise ValueError("queue_depth needs min_dwell_s >= 0 and window >= 1")

    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision:
        if self.include_running:
            depth = window_mean(history, self.window, lambda s: s.num_waiting + s.num_running)
            what = "waiting+running"
        else:
            depth = window_mean(history, self.window, lambda s: s.num_waiting)
            what = "waiting"
        return hysteresis(
            current, depth, high=self.high, low=self.low,
            seconds_in_mode=seconds_in_mode, min_dwell_s=self.min_dwell_s, what=what,
        )
