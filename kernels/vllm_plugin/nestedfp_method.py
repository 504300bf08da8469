"""The ``nestedfp`` quantization method: FP16 checkpoints stored as two byte planes.

Loads an ordinary FP16 checkpoint; after loading, each linear weight is split into its
E4M3 upper plane and residual lower plane (same bytes as FP16). The linear method calls a
``nestedfp`` op, which reads the shared mode tensor at run time.

Where a layer's input is written by an elementwise kernel (an RMSNorm before qkv_proj and gate_up_proj,
SiLU-and-mul before down_proj), the method quantizes x per token itself, in plain torch ops, and calls
``nestedfp::linear_prequantized``: ``torch.compile`` fuses that quantization into the kernel that writes x,
as it does for vLLM's own FP8. The price is that FP16 mode computes the codes too (one byte per value
written by a kernel that writes two already). ``codes_pass`` swaps those fused kernels (SiLU-and-mul before
down_proj, RMSNorm before qkv_proj and gate_up_proj) for mode-aware ones that write x in FP16 mode and the codes
in FP8 mode. An attention output projection's input comes from the
attention kernel, with nothing to fuse into, so it keeps ``nestedfp::linear``, which quantizes x only in
FP8 mode. So does every layer when nothing compiles the model (``enforce_eager``): unfused, the torch ops would
be separate kernels. ``NESTEDFP_PREQUANTIZE=0`` sends every layer to ``nestedfp::linear``; a comma-separated
list of layer-name suffixes picks the layers. On the H200 it made FP8 mode 0.7-2.8% faster in the engine and
FP16 mode 0.7-1.8% slower (docs/BENCHMARKS.md, "Engine v9"): shipped on, as FP8 is the mode that runs under load.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch.nn import Parameter

from vllm.model_executor.layers.linear import LinearBase, LinearMethodBase
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import ModelWeightParameter
from vllm.model_executor.utils import set_weight_attrs

from kernels import split_k
from kernels.nested_format import NestedRangeError, nested_split
from kernels.reference import quantize_per_token
from kernels.vllm_plugin.precision import mode_tensor
from kernels.warmup import warm_layer

logger = logging.getLogger(__name__)

# "1": the rule below; "0": no layer; else a comma-separated list of the layer-name suffixes that do.
PREQUANTIZE = os.environ.get("NESTEDFP_PREQUANTIZE", "1")
ATTENTION_OUTPUT_SUFFIXES = ("o_proj", "out_proj")  # layers whose input the attention kernel writes


def prequantizes(prefix: str) -> bool:
    """Whether the layer named ``prefix`` quantizes x in ``apply`` (module docstring)."""
    if PREQUANTIZE in ("0", "1"):
        return PREQUANTIZE == "1" and not prefix.endswith(ATTENTION_OUTPUT_SUFFIXES)
    return prefix.endswith(tuple(PREQUANTIZE.split(",")))


@register_quantization_config("nestedfp")
class NestedFPConfig(QuantizationConfig):
    """Chosen by the user (``quantization="nestedfp"``); needs nothing from the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self._pass_installed = False  # codes_pass, once per engine: vLLM builds every layer under one config

    def __repr__(self) -> str:
        return "NestedFPConfig()"

    def get_name(self) -> str:
        return "nestedfp"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 89  # FP8 tensor cores (Ada, Hopper); the CPU path ignores this

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NestedFPConfig":
        return cls()

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> "NestedFPLinearMethod | None":
        # Linear layers only: embeddings and lm_head (vocab-parallel embeddings) stay as vLLM has them.
        if isinstance(layer, LinearBase):
            if not self._pass_installed:
                _install_codes_pass()
                self._pass_installed = True
            return NestedFPLinearMethod(prefix)
        return None


def _install_codes_pass() -> None:
    """Let torch.compile hand the nested layers their codes from mode-aware SiLU-and-mul and RMSNorm kernels
    (``codes_pass``).

    Called while vLLM builds the model, before its compile backend copies the Inductor config.
    ``NESTEDFP_SILU_CODES=0`` / ``NESTEDFP_NORM_CODES=0`` leave that kernel to Inductor's own fusion, which then
    writes the codes in both modes.
    """
    families = tuple(f for f, env in (("silu_mul", "NESTEDFP_SILU_CODES"), ("rms_norm", "NESTEDFP_NORM_CODES"))
                     if os.environ.get(env, "1") != "0")
    if not families:
        return
    try:
        from vllm.config import get_current_vllm_config

        compile_config = get_current_vllm_config().compilation_config.inductor_compile_config
    except Exception:  # noqa: BLE001 - no current config (a layer built outside an engine)
        return
    try:
        from kernels.vllm_plugin import codes_pass
    except Exception as e:  # noqa: BLE001 - a vLLM without the IR ops or pass base the patterns follow
        logger.warning("nestedfp: the codes pass is unavailable with this vLLM (%r); the kernels before nested "
                       "layers keep writing codes in FP16 mode", e)
        return
    if not codes_pass.install(compile_config, families):
        logger.warning("nestedfp: %s already set; the kernels before nested layers keep writing codes in FP16 mode",
                       codes_pass.PASS_KEY)


def _max_step_tokens() -> int:
    """The most tokens one engine step carries (the warm-up's largest M); 8192 if vLLM does not say."""
    try:
        from vllm.config import get_current_vllm_config

        return int(get_current_vllm_config().scheduler_config.max_num_batched_tokens)
    except Exception:  # noqa: BLE001 - no current config (e.g. a layer built outside an engine)
        return 8192


class NestedFPLinearMethod(LinearMethodBase):
    """FP16 weights at load time; two planes plus a run-time mode afterwards."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        weight_loader = extra_weight_attrs.pop("weight_loader")
        weight = ModelWeightParameter(
            data=torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            input_dim=1,
            output_dim=0,
            weight_loader=weight_loader,
        )
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = layer.weight.data
        layer.nestedfp_prefix = self.prefix
        if weight.dtype != torch.float16:
            logger.warning("nestedfp: %s is %s, not float16; kept as is", self.prefix, weight.dtype)
            layer.nestedfp_nested = False
            return
        try:
            nw = nested_split(weight)
        except NestedRangeError as e:
            logger.warning("nestedfp: %s kept in plain FP16 (%s)", self.prefix, e)
            layer.nestedfp_nested = False
            return
        del layer.weight  # frees the FP16 copy: peak extra memory is this one layer's planes
        layer.upper = Parameter(nw.upper, requires_grad=False)
        layer.lower = Parameter(nw.lower, requires_grad=False)
        layer.nestedfp_scale_exp = nw.scale_exp
        layer.nestedfp_nested = True
        layer.nestedfp_prequantize = prequantizes(self.prefix)
        layer.register_buffer("nestedfp_mode", mode_tensor(nw.upper.device), persistent=False)
        if nw.scale_exp:
            logger.info("nestedfp: %s nested with pre-scale 2**-%d", self.prefix, nw.scale_exp)
        if nw.upper.is_cuda:  # compile the op's kernels for this shape now, not under load
            split_k.reserve(nw.upper.device)  # before vLLM captures graphs, with or without the warm-up
            try:
                warm_layer(nw.upper, nw.lower, nw.scale_exp, getattr(layer, "bias", None), _max_step_tokens())
            except Exception:  # noqa: BLE001 - a failed warm-up only moves compiles to serving time
                logger.warning("nestedfp: kernel warm-up failed for %s", self.prefix, exc_info=True)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not layer.nestedfp_nested:
            return torch.nn.functional.linear(x, layer.weight, bias)
        if layer.nestedfp_prequantize and torch.compiler.is_compiling():  # traced: the quantization will fuse
            x_fp8, x_scale = quantize_per_token(x)
            return torch.ops.nestedfp.linear_prequantized(
                x, x_fp8, x_scale, layer.upper, layer.lower, layer.nestedfp_mode, layer.nestedfp_scale_exp, bias
            )
        return torch.ops.nestedfp.linear(
            x, layer.upper, layer.lower, layer.nestedfp_mode, layer.nestedfp_scale_exp, bias
        )
