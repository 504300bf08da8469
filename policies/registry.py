"""Policies by name, so app config can pick one with plain strings and numbers."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from policies.base import Policy
from policies.queue_depth import QueueDepthPolicy
from policies.slo import SLOPolicy
from policies.static import StaticPolicy
from policies.token_budget import TokenBudgetPolicy

POLICIES: dict[str, tuple[Callable[..., Policy], dict[str, Any]]] = {
    "static_fp16": (StaticPolicy, {"mode": "fp16"}),
    "static_fp8": (StaticPolicy, {"mode": "fp8"}),
    "queue_depth": (QueueDepthPolicy, {}),
    "slo": (SLOPolicy, {}),
    "token_budget": (TokenBudgetPolicy, {}),
}


def build_policy(name: str, params: Optional[Mapping[str, Any]] = None) -> Policy:
    """Build a policy from config; unknown names or parameters raise ValueError naming the valid ones."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    cls, fixed = POLICIES[name]
    params = dict(params or {})
    allowed = {f.name for f in dataclasses.fields(cls)} - set(fixed)  # type: ignore[arg-type]
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"policy {name!r} got unknown params {sorted(unknown)}; accepted: {sorted(allowed)}")
    return cls(**fixed, **params)
