"""vLLM integration of NestedFP: the ``nestedfp`` quantization method and runtime precision switching.

Loaded by vLLM in every process through the ``vllm.general_plugins`` entry point, so engine-core
and worker processes all know the method. Engine arguments for switching::

    LLM(model=..., dtype="float16", quantization="nestedfp", worker_extension_cls=WORKER_EXTENSION)
    llm.collective_rpc("set_precision", args=("fp8",))
"""

WORKER_EXTENSION = "kernels.vllm_plugin.worker_extension.PrecisionWorkerExtension"
QUANTIZATION = "nestedfp"


def register() -> None:
    """Entry point: register the quantization config (idempotent) and the custom op."""
    import kernels.ops  # noqa: F401  (defines torch.ops.nestedfp.linear)
    import kernels.vllm_plugin.nestedfp_method  # noqa: F401  (registers "nestedfp")
