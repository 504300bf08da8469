"""A post-grad Inductor pass: the kernels that write a nested layer's input write only what the mode reads.

Why: the nestedfp method quantizes x in plain torch ops so that torch.compile fuses the quantization into the
kernel that writes x (``nestedfp_method``). That kernel cannot know the mode, so FP16 mode computes and writes a
byte of codes per value that it never reads. This pass swaps two such fused kernels for ops that read the same
mode tensor as the layer, and write x in FP16 mode and the codes and scales in FP8 mode:
- ``silu_mul``: SiLU-and-mul before down_proj, for ``nestedfp::silu_mul_codes`` (``kernels.silu_mul_codes``);
- ``rms_norm``: RMSNorm before qkv_proj and gate_up_proj, with or without vLLM's residual add before it, for
  ``nestedfp::[add_]rms_norm_codes`` (``kernels.rms_norm_codes``).

The patterns are traced from vLLM's own code, through Inductor's decompositions, followed by
``quantize_per_token``: ``SiluAndMul.forward_native``, and vLLM's IR ops ``rms_norm`` and ``fused_add_rms_norm``.
vLLM hands this pass those IR ops as single nodes where its compile lowers them after its passes (CUDA), and their
native decomposition where it does not wrap them (CPU); both forms are registered. A match is left alone unless
every user of x, codes and scales is a ``linear_prequantized`` on exactly those three, all reading one mode
tensor: the fused op leaves unwritten whichever the mode does not read. ``NestedFPConfig`` installs the pass as
vLLM's ``post_grad_custom_post_pass`` unless one is set already.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch._inductor.pattern_matcher import Match, PatternMatcherPass, fwd_only, gen_pattern, register_graph_pattern

from kernels import ops  # noqa: F401 - registers the nestedfp ops the patterns and replacements call
from kernels.reference import quantize_per_token
from kernels.rms_norm_codes import MAX_WIDTH
from vllm import ir
from vllm.compilation.passes.inductor_pass import InductorPass
from vllm.model_executor.layers.activation import SiluAndMul

logger = logging.getLogger(__name__)

PASS_KEY = "post_grad_custom_post_pass"  # the inductor_compile_config key vLLM runs a user's pass from
FAMILIES = ("silu_mul", "rms_norm")
_LINEAR = torch.ops.nestedfp.linear_prequantized.default
_TRACE_EPS = 1e-6  # stands for the epsilon while tracing: a value no other constant in the patterns has
# vLLM's native RMSNorm code, looked up on import so that a vLLM without it fails the import, which the plugin
# catches (``nestedfp_method._install_codes_pass``), not a compile
_RMS_NORM_NATIVE = ir.ops.rms_norm.impls["native"].impl_fn
_ADD_RMS_NORM_NATIVE = ir.ops.fused_add_rms_norm.impls["native"].impl_fn


def _silu_search(gate_up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = SiluAndMul.forward_native(gate_up)
    return (x, *quantize_per_token(x))


def _silu_replacement(gate_up: torch.Tensor, mode: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.ops.nestedfp.silu_mul_codes.default(gate_up, mode)


def _norm_searches() -> list[tuple[Callable, bool]]:
    """``(search, has_residual)`` for vLLM's two RMSNorm IR ops, each as the node vLLM's CUDA compile hands the pass
    and as its native code, followed by the quantization."""
    def add_node(x, residual, weight, eps):
        y, res = torch.ops.vllm_ir.fused_add_rms_norm.default(x, residual, weight, eps)
        return (y, res, *quantize_per_token(y))

    def add_code(x, residual, weight, eps):
        y, res = _ADD_RMS_NORM_NATIVE(x, residual, weight, eps)
        return (y, res, *quantize_per_token(y))

    def plain_node(x, weight, eps):
        y = torch.ops.vllm_ir.rms_norm.default(x, weight, eps)
        return (y, *quantize_per_token(y))

    def plain_code(x, weight, eps):
        y = _RMS_NORM_NATIVE(x, weight, eps)
        return (y, *quantize_per_token(y))

    return [(add_node, True), (add_code, True), (plain_node, False), (plain_code, False)]


def _norm_replacement(x: torch.Tensor, weight: torch.Tensor, eps: float,
                      mode: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.ops.nestedfp.rms_norm_codes.default(x, weight, eps, mode)


def _add_norm_replacement(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                          mode: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.ops.nestedfp.add_rms_norm_codes.default(x, residual, weight, eps, mode)


def _mode_of_sole_consumers(match: Match) -> torch.fx.Node | None:
    """The mode node of the ``linear_prequantized`` calls that are the only users of the match's x, codes and
    scales (its first and last two outputs) outside the match, if there is one."""
    outs = match.output_nodes()
    x, codes, scales = outs[0], outs[-2], outs[-1]
    users = (set(x.users) | set(codes.users) | set(scales.users)) - set(match.nodes)
    if not users or any(u.target is not _LINEAR or tuple(u.args[:3]) != (x, codes, scales) for u in users):
        return None
    modes = {u.args[5] for u in users}
    return modes.pop() if len(modes) == 1 else None


@functools.cache
def _patterns(family: str) -> PatternMatcherPass:
    """One family's patterns, traced once per process. Sizes and dtypes are wildcards (the matcher ignores
    literal ints, floats and dtypes), so one trace matches every width and 16-bit activation dtype; the
    epsilon is captured as an argument."""
    patterns = PatternMatcherPass(pass_name=f"nestedfp_{family}_codes")
    if family == "silu_mul":
        register_graph_pattern(gen_pattern(_silu_search, [torch.empty(5, 8, dtype=torch.float16)], fwd_only),
                               pass_dict=patterns)(_fuse_silu)
    elif family == "rms_norm":
        for search, has_residual in _norm_searches():
            # x (and the residual) as distinct tensors, or they trace as one input; meta, so nothing runs
            example = [torch.empty(5, 8, dtype=torch.float16, device="meta") for _ in range(1 + has_residual)]
            example.append(torch.empty(8, dtype=torch.float16, device="meta"))
            register_graph_pattern(gen_pattern(search, example, fwd_only, scalar_workaround={"eps": _TRACE_EPS}),
                                   pass_dict=patterns)(_fuse_norm)
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return patterns


def _fuse_silu(match: Match, gate_up: torch.fx.Node) -> None:
    mode = _mode_of_sole_consumers(match)
    if mode is not None:
        match.replace_by_example(_silu_replacement, [gate_up, mode])
        CodesPass.replaced["silu_mul"] += 1


def _fuse_norm(match: Match, x: torch.fx.Node, weight: torch.fx.Node, eps: float,
               residual: torch.fx.Node | None = None) -> None:
    mode = _mode_of_sole_consumers(match)
    width = x.meta["val"].shape[-1]
    # A weightless norm (weight None) has no kernel here; nor has a row too wide to hold in registers.
    if mode is None or not isinstance(weight, torch.fx.Node) or not isinstance(width, int) or width > MAX_WIDTH:
        return
    if residual is None:
        match.replace_by_example(_norm_replacement, [x, weight, eps, mode])
    else:
        match.replace_by_example(_add_norm_replacement, [x, residual, weight, eps, mode])
    CodesPass.replaced["rms_norm"] += 1


class CodesPass(InductorPass):
    """The pass, for ``inductor_compile_config["post_grad_custom_post_pass"]``; stateless but for which families
    it applies, so copies agree."""

    replaced = dict.fromkeys(FAMILIES, 0)  # matches replaced in this process, per family, for reports and tests

    def __init__(self, families: tuple[str, ...] = FAMILIES) -> None:
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}; expected some of {FAMILIES}")
        self.families = tuple(f for f in FAMILIES if f in families)

    def __call__(self, graph: torch.fx.Graph) -> None:
        # A replacement erases the nodes it matched; vLLM's post-pass cleanup removes anything left dead.
        for family in self.families:
            n = _patterns(family).apply(graph)
            logger.debug("nestedfp: %d %s + quantization patterns matched", n, family)

    def uuid(self) -> str:
        return InductorPass.hash_dict({"families": self.families, "source": InductorPass.hash_source(
            self, _silu_search, _norm_searches, _fuse_silu, _fuse_norm, _mode_of_sole_consumers, quantize_per_token,
            SiluAndMul.forward_native, _RMS_NORM_NATIVE, _ADD_RMS_NORM_NATIVE)})


def install(compile_config: dict, families: tuple[str, ...] = FAMILIES) -> bool:
    """Adds the pass to a vLLM ``inductor_compile_config``; False where another pass holds the slot."""
    current = compile_config.get(PASS_KEY)
    if current is None:
        compile_config[PASS_KEY] = CodesPass(families)
        return True
    return isinstance(current, CodesPass)
