"""Builds the Serve application from one ``AppConfig``: controller, N vLLM replicas, ingress."""

from __future__ import annotations

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from deployments.config import AppConfig
from deployments.ingress import ENDPOINTS, PrecisionIngress, make_app
from deployments.replica import NestedFPServer
from deployments.tiny_model import ensure_tiny_model
from kernels.vllm_plugin import QUANTIZATION, WORKER_EXTENSION
from policies.controller import PolicyController
from policies.registry import build_policy

CONTROLLER_NAME = "PrecisionController"


def placement_bundles(cfg: AppConfig) -> list[dict[str, float]]:
    """A replica's placement group. On GPUs, one bundle per engine worker: vLLM's Ray executor puts each worker,
    with its one GPU, in its own bundle. The replica's CPUs go to the first. On CPUs the engine's workers are
    processes of the replica (vLLM's multiprocessing executor), so one bundle holds them all."""
    if not cfg.gpus_per_replica:
        return [{"CPU": cfg.cpus_per_replica}]
    return [{"CPU": cfg.cpus_per_replica, "GPU": 1}] + [{"GPU": 1}] * (cfg.engine_workers - 1)


def llm_config(cfg: AppConfig) -> LLMConfig:
    """The vLLM engine every replica runs: the FP16 checkpoint, nested at load time."""
    return LLMConfig(
        model_loading_config={"model_id": cfg.model_id, "model_source": cfg.model_path or ensure_tiny_model()},
        engine_kwargs={
            "dtype": "float16",
            "quantization": QUANTIZATION,
            "worker_extension_cls": WORKER_EXTENSION,
            **cfg.engine_kwargs,
        },
        deployment_config={
            "num_replicas": cfg.replicas,
            "max_ongoing_requests": cfg.max_ongoing_requests,
            "max_queued_requests": cfg.max_queued_requests,
            "ray_actor_options": {"num_cpus": 0},
        },
        placement_group_config={"bundles": placement_bundles(cfg)},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": f"{cfg.kv_cache_gib:g}"}},
    )


def ingress_options(cfg: AppConfig, llm: LLMConfig) -> dict:
    """Serve LLM's ingress options with a fixed replica count (its default autoscales 1 to 1)."""
    options = PrecisionIngress.get_deployment_options([llm])
    options.pop("autoscaling_config", None)
    options["num_replicas"] = cfg.ingress_replicas or cfg.replicas
    options.setdefault("ray_actor_options", {})["num_cpus"] = 0
    return options


def build_app(cfg: AppConfig) -> Application:
    build_policy(cfg.policy.name, cfg.policy.params)  # fail at build time on a bad policy config
    controller = PolicyController.options(name=CONTROLLER_NAME).bind(
        policy=cfg.policy.name,
        policy_params=cfg.policy.params,
        tick_s=cfg.policy.tick_s,
        stale_after_s=cfg.policy.stale_after_s,
    )
    llm = llm_config(cfg)
    replicas = build_llm_deployment(
        llm,
        deployment_cls=NestedFPServer,
        bind_kwargs={
            "controller": controller,
            "report_interval_s": cfg.precision.report_interval_s,
            "lease_s": cfg.precision.lease_s,
        },
    )
    ingress_cls = make_fastapi_ingress(PrecisionIngress, endpoint_map=ENDPOINTS, app=make_app())
    options = ingress_options(cfg, llm)
    return serve.deployment(ingress_cls, **options).bind(
        llm_deployments={cfg.model_id: replicas},
        model_cards={cfg.model_id: to_model_metadata(cfg.model_id, llm)},
        controller=controller,
        admin_token=cfg.admin_token,
    )
