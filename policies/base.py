"""The policy interface and the hysteresis rule the threshold policies share."""

from __future__ import annotations

import abc
from typing import Callable, Sequence

from policies.signals import Decision, Mode, ReplicaStats


class Policy(abc.ABC):
    """Maps a replica's recent stats to the mode it should run in.

    ``decide`` must be a pure function of its arguments (no clocks, no state between calls), so a
    recorded trace replays to the same switches and the controller can restart without memory.
    ``history`` is oldest-first and non-empty; ``seconds_in_mode`` is how long ``current`` has held.
    """

    name: str = "policy"

    @abc.abstractmethod
    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision: ...


def window_mean(history: Sequence[ReplicaStats], n: int, key: Callable[[ReplicaStats], float]) -> float:
    """Mean of ``key`` over the last ``n`` samples: one noisy sample should not flip a replica."""
    tail = history[-n:]
    return sum(key(s) for s in tail) / len(tail)


def hysteresis(
    current: Mode,
    value: float,
    *,
    high: float,
    low: float,
    seconds_in_mode: float,
    min_dwell_s: float,
    what: str,
) -> Decision:
    """fp8 once ``value >= high``, fp16 once ``value <= low``, otherwise stay.

    The band between ``low`` and ``high`` stops a signal that hovers near one threshold from
    flapping; the dwell bounds the switch rate even when the signal swings across the whole band.
    """
    if current == "fp16" and value >= high:
        want: Mode = "fp8"
        why = f"{what} {value:.3g} >= {high:g}"
    elif current == "fp8" and value <= low:
        want = "fp16"
        why = f"{what} {value:.3g} <= {low:g}"
    else:
        return Decision(current, f"{what} {value:.3g} within ({low:g}, {high:g})")
    return dwell(current, want, why, seconds_in_mode, min_dwell_s)


def dwell(current: Mode, want: Mode, why: str, seconds_in_mode: float, min_dwell_s: float) -> Decision:
    """Hold ``current`` until it has lasted ``min_dwell_s``; a switch costs a little, flapping costs a lot."""
    if want != current and seconds_in_mode < min_dwell_s:
        return Decision(current, f"{why}, but dwell {seconds_in_mode:.1f}s < {min_dwell_s:g}s")
    return Decision(want, why)
