"""What a replica reports and what a policy answers.

Kept free of torch and vLLM: the controller imports only this, so it stays a small CPU actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["fp16", "fp8"]
MODES: tuple[Mode, ...] = ("fp16", "fp8")


class ReplicaStats(BaseModel):
    """One sample of a replica's load and latency (ARCHITECTURE.md, "Replica stats").

    Latency percentiles are over the replica's sliding window and are None when the window has no
    samples. ``mode`` is the mode in force on the replica when the sample was taken.
    Unknown fields are rejected so a renamed field fails loudly instead of reading as zero.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    replica_id: str
    mode: Mode
    num_running: int = Field(0, ge=0)
    num_waiting: int = Field(0, ge=0)
    kv_cache_usage: float = Field(0.0, ge=0.0, le=1.0)
    ttft_p50: Optional[float] = None
    ttft_p90: Optional[float] = None
    tpot_p50: Optional[float] = None
    tpot_p90: Optional[float] = None
    req_tpot_p50: Optional[float] = None  # finished requests' mean TPOT (engine_stats.py says why two)
    req_tpot_p90: Optional[float] = None
    tokens_per_s: float = Field(0.0, ge=0.0)
    scheduled_tokens_per_step: float = Field(0.0, ge=0.0)
    max_num_batched_tokens: int = Field(0, ge=0)
    # Tokens the engine has processed since the replica started: a policy takes rates over any span of its
    # history from two samples, instead of the window's 10-s means (policies/fp16_load.py).
    prompt_tokens_total: int = Field(0, ge=0)
    output_tokens_total: int = Field(0, ge=0)
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | ReplicaStats) -> ReplicaStats:
        return d if isinstance(d, ReplicaStats) else cls.model_validate(d)


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the mode it wants and a human-readable why (kept in the switch log)."""

    mode: Mode
    reason: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
