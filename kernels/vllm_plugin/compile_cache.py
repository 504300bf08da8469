"""One vLLM compile cache per GPU for engine workers that Ray places on a shared node.

Why: vLLM 0.25 keys its torch.compile cache (``VLLM_CACHE_ROOT/torch_compile_cache``) by model,
config and rank, but not by device. Under Ray Serve LLM, vLLM's Ray executor leaves every GPU of
the node visible to each worker, which runs on ``cuda:<its GPU>``, and Inductor bakes that device
index into the code it caches. So a replica on GPU 1 loads code compiled on GPU 0 and fails at its
first kernel ("CUDA driver error: invalid argument", or Triton's "Pointer argument (at 0) cannot be
accessed"). Our two-replica app failed with exactly these errors on a 2-GPU H200 box on
2026-11-22, both replicas saving to one cache path (docs/BENCHMARKS.md, "Two replicas on a 2-GPU
H200 box"). vLLM later added the device index to the cache path itself (vllm-project/vllm PR
38962). A subfolder per assigned GPU fixes it on releases without that change, keeps the cache
warm across restarts on the same GPU, and does no harm on releases with it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import MutableMapping

DEFAULT_ROOT = "~/.cache/vllm"  # vLLM's default VLLM_CACHE_ROOT
_GPU_FOLDER = re.compile(r"gpu-\d+(-\d+)*")  # per_gpu_root's last component


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray assigned to this process; empty outside a Ray worker (Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def per_gpu_root(root: str, gpu_ids: list[str]) -> str:
    """``root``/gpu-<ids>: a folder per set of assigned GPUs."""
    return os.path.join(root, "gpu-" + "-".join(gpu_ids))


def isolate_compile_cache(environ: MutableMapping[str, str] = os.environ,
                          gpu_ids: list[str] | None = None) -> str | None:
    """Point ``VLLM_CACHE_ROOT`` at a folder of its own for this process's GPUs (idempotent).

    Returns the new root, or None where nothing changed: no GPU assigned by Ray, or already there.
    A root that is already a GPU folder counts as its parent, so a pooled Ray worker that later runs
    on another GPU moves to that GPU's folder. Must run before vLLM first reads the variable in the
    worker (the plugin entry point does).
    """
    ids = ray_gpu_ids() if gpu_ids is None else gpu_ids
    if not ids:
        return None
    root = os.path.expanduser(environ.get("VLLM_CACHE_ROOT") or DEFAULT_ROOT)
    if _GPU_FOLDER.fullmatch(os.path.basename(root)):
        root = os.path.dirname(root)
    new = per_gpu_root(root, ids)
    if environ.get("VLLM_CACHE_ROOT") == new:
        return None
    environ["VLLM_CACHE_ROOT"] = new
    return new
