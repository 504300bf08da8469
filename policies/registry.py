"""Policies by name, so app config can pick one with plain strings and numbers."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping, Optional

from pydantic import TypeAdapter, ValidationError

from policies.base import Policy
from policies.fp16_load import Fp16LoadPolicy
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
    "fp16_load": (Fp16LoadPolicy, {}),
}


def build_policy(name: str, params: Optional[Mapping[str, Any]] = None) -> Policy:
    """Build a policy from config or the admin API; any bad input raises ValueError naming the valid choices.

    Parameter values are checked (and coerced, e.g. "8" -> 8.0) against the policy's field types
    here: a wrongly typed value would otherwise pass construction and fail in every ``decide``,
    which the controller survives but which leaves the replicas stuck in their current mode.
    """
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"policy params must be a mapping of name to value, got {type(params).__name__}")
    cls, fixed = POLICIES[name]
    params = dict(params or {})
    allowed = {f.name for f in dataclasses.fields(cls)} - set(fixed)  # type: ignore[arg-type]
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"policy {name!r} got unknown params {sorted(unknown)}; accepted: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        try:
            params[key] = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as e:
            raise ValueError(f"policy {name!r} param {key!r}: {e.errors()[0]['msg']}, got {value!r}") from None
    return cls(**fixed, **params)


def policy_params(policy: Policy) -> dict[str, Any]:
    """Every tunable of ``policy``, defaults included: ``build_policy(policy.name, result)`` rebuilds it.

    The admin API reports these rather than the params a caller sent, so GET /admin/policy can be
    POSTed back verbatim to restore a policy exactly.
    """
    if not dataclasses.is_dataclass(policy):
        return {}
    fixed = POLICIES.get(policy.name, (None, {}))[1]
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy) if f.name not in fixed}
