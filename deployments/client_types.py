"""Typed objects for Python clients that call the app through Ray Serve handles (no HTTP)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class CompletionInput(BaseModel):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stop: Optional[list[str]] = None


class CompletionOutput(BaseModel):
    text: str
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    replica: str
    mode: Literal["fp16", "fp8"]


class TokenChunk(BaseModel):
    text: str
    finish_reason: Optional[str] = None
    replica: str
    mode: Literal["fp16", "fp8"]


class ReplicaPrecision(BaseModel):
    mode: Literal["fp16", "fp8"]
    since: float
    reason: str
    switches: int
    override: Optional[str] = None


class PrecisionStatus(BaseModel):
    policy: Optional[str] = None
    policy_params: dict = Field(default_factory=dict)
    replicas: dict[str, ReplicaPrecision]
    switches: list[dict]


class PolicyStatus(BaseModel):
    name: str
    params: dict
    since: float
    available: list[str]
    changes: list[dict]
