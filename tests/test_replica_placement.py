"""A replica's GPUs, its engine's workers and its placement group agree: one GPU per worker, one bundle per
worker, as vLLM's Ray executor places them. Checked against Ray Serve LLM's own reading of the config."""

import pytest
from pydantic import ValidationError

from deployments.builder import llm_config, placement_bundles
from deployments.config import AppConfig

vllm_models = pytest.importorskip("ray.llm._internal.serve.engines.vllm.vllm_models")


def engine_config(cfg: AppConfig):
    """What Serve LLM makes of the app's LLMConfig: the engine kwargs and bundles a replica starts with."""
    return vllm_models.VLLMEngineConfig.from_llm_config(llm_config(cfg))


def test_a_cpu_replica_keeps_one_bundle_and_a_single_worker_engine():
    cfg = AppConfig()
    assert placement_bundles(cfg) == [{"CPU": cfg.cpus_per_replica}]
    assert "tensor_parallel_size" not in cfg.engine_kwargs
    assert engine_config(cfg).num_devices == 1


def test_one_gpu_per_replica_is_one_worker_on_one_gpu_bundle():
    cfg = AppConfig(gpus_per_replica=1, cpus_per_replica=1)
    assert placement_bundles(cfg) == [{"CPU": 1, "GPU": 1}]
    assert engine_config(cfg).num_devices == 1


def test_several_gpus_per_replica_run_the_engine_tensor_parallel_one_bundle_per_gpu(monkeypatch):
    monkeypatch.setenv("NESTEDFP_GPUS_PER_REPLICA", "2")  # the README's way to serve a model over two GPUs
    cfg = AppConfig(cpus_per_replica=1)
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2
    engine = engine_config(cfg)
    assert engine.tensor_parallel_degree == 2 and engine.num_devices == 2
    assert engine.placement_bundles == [{"CPU": 1, "GPU": 1}, {"GPU": 1}]  # the replica's CPUs counted once


def test_pipeline_stages_share_the_gpus_with_tensor_parallelism():
    cfg = AppConfig(gpus_per_replica=4, engine_kwargs={"pipeline_parallel_size": 2})
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2
    assert len(engine_config(cfg).placement_bundles) == 4


@pytest.mark.parametrize("gpus, kwargs, message", [
    (4, {"tensor_parallel_size": 2}, "runs 2 workers"),
    (1, {"tensor_parallel_size": 2}, "runs 2 workers"),
    (3, {"pipeline_parallel_size": 2}, "pipeline_parallel_size=2 must be >= 1 and divide gpus_per_replica=3"),
])
def test_workers_that_do_not_match_the_gpus_fail_at_config_time(gpus, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        AppConfig(gpus_per_replica=gpus, engine_kwargs=kwargs)


def test_an_explicit_tensor_parallel_size_that_fits_is_kept():
    cfg = AppConfig(gpus_per_replica=2, engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 4096})
    assert cfg.engine_kwargs == {"tensor_parallel_size": 2, "max_model_len": 4096}
    assert placement_bundles(cfg) == [{"CPU": cfg.cpus_per_replica, "GPU": 1}, {"GPU": 1}]
