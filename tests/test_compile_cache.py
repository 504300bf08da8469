"""Each GPU of a shared node gets its own vLLM compile cache (kernels.vllm_plugin.compile_cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from kernels.vllm_plugin import compile_cache


def test_a_worker_on_gpu_1_gets_a_cache_root_apart_from_gpu_0():
    env0, env1 = {}, {}
    root0 = compile_cache.isolate_compile_cache(env0, ["0"])
    root1 = compile_cache.isolate_compile_cache(env1, ["1"])
    assert root0 != root1
    assert env0["VLLM_CACHE_ROOT"] == root0 == os.path.join(os.path.expanduser("~/.cache/vllm"), "gpu-0")
    assert env1["VLLM_CACHE_ROOT"] == os.path.join(os.path.expanduser("~/.cache/vllm"), "gpu-1")


def test_an_operator_set_root_is_kept_as_the_parent():
    env = {"VLLM_CACHE_ROOT": "/data/vllm"}
    assert compile_cache.isolate_compile_cache(env, ["2", "3"]) == "/data/vllm/gpu-2-3"


def test_registering_again_in_the_same_process_does_not_nest_folders():
    env = {}
    first = compile_cache.isolate_compile_cache(env, ["1"])
    assert compile_cache.isolate_compile_cache(env, ["1"]) is None
    assert env["VLLM_CACHE_ROOT"] == first


def test_a_process_moved_to_another_gpu_moves_to_that_gpus_folder_under_the_same_parent():
    env = {"VLLM_CACHE_ROOT": "/data/vllm"}
    compile_cache.isolate_compile_cache(env, ["0"])
    assert compile_cache.isolate_compile_cache(env, ["1"]) == "/data/vllm/gpu-1"


def test_a_process_without_a_ray_gpu_keeps_vllms_root():
    env = {"VLLM_CACHE_ROOT": "/data/vllm"}
    assert compile_cache.isolate_compile_cache(env, []) is None
    assert env == {"VLLM_CACHE_ROOT": "/data/vllm"}


def test_gpu_ids_come_from_rays_runtime_context_only_when_ray_is_running(monkeypatch):
    context = types.SimpleNamespace(get_accelerator_ids=lambda: {"GPU": [1], "neuron_cores": []})
    fake = types.SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: context)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert compile_cache.ray_gpu_ids() == ["1"]
    fake.is_initialized = lambda: False
    assert compile_cache.ray_gpu_ids() == []
    monkeypatch.delitem(sys.modules, "ray")
    assert compile_cache.ray_gpu_ids() == []


RAY_SCRIPT = """
import json, os, ray
ray.init(num_cpus=1, num_gpus=2, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0, num_gpus=1)
class Worker:
    def root(self):
        from kernels.vllm_plugin import register
        register()  # vLLM calls this in each worker process
        register()
        return os.environ.get("VLLM_CACHE_ROOT")

workers = [Worker.remote() for _ in range(2)]
print(json.dumps(ray.get([w.root.remote() for w in workers])))
ray.shutdown()
"""


def test_two_ray_workers_on_different_gpus_get_different_roots_through_the_plugin_entry_point(tmp_path):
    """Real Ray with two logical GPUs: each GPU actor's ``register()`` picks its own folder."""
    pytest.importorskip("ray")
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp_path), "PYTHONPATH": os.getcwd(), "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", RAY_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    roots = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(roots) == [str(tmp_path / "gpu-0"), str(tmp_path / "gpu-1")]
