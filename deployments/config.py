"""One pydantic model for the whole app: YAML file first, then ``NESTEDFP_*`` environment overrides.

Nested fields use ``__`` in variable names, e.g. ``NESTEDFP_POLICY__NAME=slo`` or
``NESTEDFP_ENGINE_KWARGS='{"max_model_len": 4096}'`` (JSON for dicts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SLOTargets(BaseModel):
    ttft_s: float = Field(2.0, gt=0, description="time to first token target")
    tpot_s: float = Field(0.2, gt=0, description="time per output token target")


class PolicyConfig(BaseModel):
    name: str = "queue_depth"
    params: dict[str, Any] = Field(default_factory=dict)
    tick_s: float = Field(0.25, gt=0, le=0.25, description="controller decision period")
    stale_after_s: float = Field(3.0, gt=0)


class ReplicaPrecisionConfig(BaseModel):
    report_interval_s: float = Field(0.2, gt=0, le=0.25)
    lease_s: float = Field(10.0, gt=0, description="fall back to fp16 after this long without the controller")


class AppConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NESTEDFP_", env_nested_delimiter="__", extra="forbid")

    model_id: str = "nestedfp-tiny"
    model_path: Optional[str] = Field(None, description="HF-format FP16 model dir; default: the embedded tiny Llama")
    replicas: int = Field(2, ge=1)
    # Every streamed token crosses an ingress replica's event loop, which also routes new requests;
    # one loop for several engines is a shared bottleneck. Default: one per engine replica.
    ingress_replicas: Optional[int] = Field(None, ge=1, description="default: one per engine replica")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"max_model_len": 512, "max_num_seqs": 32, "max_num_batched_tokens": 512}
    )
    # CPU machines: logical CPUs reserved per replica (fractions let several replicas share a small box).
    cpus_per_replica: float = Field(0.5, ge=0)
    # GPU machines: GPUs per replica, one per engine worker. Above one, the engine runs tensor-parallel over them
    # (tensor_parallel_size in engine_kwargs defaults to gpus_per_replica / pipeline_parallel_size).
    gpus_per_replica: int = Field(0, ge=0)
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU only: VLLM_CPU_KVCACHE_SPACE per replica")
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=-1, description="beyond this, new requests get 503")
    slo: SLOTargets = Field(default_factory=SLOTargets)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    precision: ReplicaPrecisionConfig = Field(default_factory=ReplicaPrecisionConfig)
    admin_token: str = Field("change-me", min_length=1)

    @model_validator(mode="after")
    def _workers_fit_the_gpus(self) -> "AppConfig":
        """Each engine worker takes one GPU of the replica's. Why here: a mismatch otherwise surfaces as a
        placement group that never schedules, or as vLLM's error from inside a replica, after the app started."""
        if not self.gpus_per_replica:
            return self
        pp = int(self.engine_kwargs.get("pipeline_parallel_size", 1))
        if "tensor_parallel_size" not in self.engine_kwargs and self.gpus_per_replica > 1:
            if pp < 1 or self.gpus_per_replica % pp:
                raise ValueError(f"pipeline_parallel_size={pp} must be >= 1 and divide "
                                 f"gpus_per_replica={self.gpus_per_replica}")
            self.engine_kwargs["tensor_parallel_size"] = self.gpus_per_replica // pp
        if self.engine_workers != self.gpus_per_replica:
            raise ValueError(f"gpus_per_replica={self.gpus_per_replica}, but the engine runs {self.engine_workers} "
                             f"workers (tensor_parallel_size x pipeline_parallel_size), one GPU each")
        return self

    @property
    def engine_workers(self) -> int:
        """The engine's worker processes per replica: tensor_parallel_size x pipeline_parallel_size."""
        kw = self.engine_kwargs
        return int(kw.get("tensor_parallel_size", 1)) * int(kw.get("pipeline_parallel_size", 1))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the YAML file (passed as init values).
        return env_settings, init_settings


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> AppConfig:
    """Read the YAML file (``path`` or ``$NESTEDFP_CONFIG``), apply overrides, then the environment."""
    path = path or os.environ.get("NESTEDFP_CONFIG")
    data: dict[str, Any] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    data.update(overrides)
    return AppConfig(**data)
