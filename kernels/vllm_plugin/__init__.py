"""vLLM integration of NestedFP: the ``nestedfp`` quantization method and runtime precision switching.

Loaded by vLLM in every process through the ``vllm.general_plugins`` entry point, so engine-core
and worker processes all know the method. Engine arguments for switching::

    LLM(model=..., dtype="float16", quantization="nestedfp", worker_extension_cls=WORKER_EXTENSION)
    llm.collective_rpc("set_precision", args=("fp8",))
"""

import logging

WORKER_EXTENSION = "kernels.vllm_plugin.worker_extension.PrecisionWorkerExtension"
QUANTIZATION = "nestedfp"


def _log_like_vllm() -> None:
    """Send this package's INFO lines (kernel warm-up time, pre-scaled layers) where vLLM's own go;
    otherwise Python's default WARNING level hides them in vLLM's processes."""
    ours, theirs = logging.getLogger("kernels"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for h in theirs.handlers:
        ours.addHandler(h)
    ours.setLevel(theirs.level)
    ours.propagate = False


def register() -> None:
    """Entry point: register the quantization config (idempotent) and the custom op; keep engines
    that share a node apart: a compile cache per GPU (``compile_cache``) and a TCPStore port range
    per engine (``tcpstore_port``)."""
    _log_like_vllm()
    from kernels.vllm_plugin.compile_cache import isolate_compile_cache
    from kernels.vllm_plugin.tcpstore_port import spread_tcpstore_port

    log = logging.getLogger(__name__)
    root = isolate_compile_cache()
    if root:
        log.info("nestedfp: VLLM_CACHE_ROOT=%s (a compile cache per GPU)", root)
    base = spread_tcpstore_port()
    if base:
        log.info("nestedfp: VLLM_DP_MASTER_PORT=%s (a TCPStore port range per engine)", base)
    import kernels.ops  # noqa: F401  (defines torch.ops.nestedfp.linear)
    import kernels.vllm_plugin.nestedfp_method  # noqa: F401  (registers "nestedfp")
