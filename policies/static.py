"""Baselines: always fp16 (quality reference) or always fp8 (throughput reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from policies.base import Policy
from policies.signals import MODES, Decision, Mode, ReplicaStats


@dataclass(frozen=True)
class StaticPolicy(Policy):
    mode: Mode = "fp16"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"static_{self.mode}"

    def decide(self, history: Sequence[ReplicaStats], current: Mode, seconds_in_mode: float) -> Decision:
        return Decision(self.mode, f"static {self.mode}")
