"""A post-grad Inductor pass: SiLU-and-mul before a nested layer writes only what the mode reads.

Why: the nestedfp method quantizes x in plain torch ops so that torch.compile fuses the quantization into
the kernel that writes x (``nestedfp_method``). Before down_proj that kernel is SiLU-and-mul, and fused there
it costs FP16 mode a second pass over the row and a byte of codes per value it never reads. This pass finds
``silu(gate_up[..., :d]) * gate_up[..., d:]`` followed by ``quantize_per_token`` whose results feed only
``nestedfp::linear_prequantized``, and replaces both with ``nestedfp::silu_mul_codes(gate_up, mode)``, whose
kernel reads the same mode tensor as the layer (``kernels.silu_mul_codes``).

The pattern is traced from vLLM's own ``SiluAndMul.forward_native`` (what vLLM runs under torch.compile),
through Inductor's decompositions, so it follows the model's graph. A match is left alone unless every user
of x, codes and scales is a ``linear_prequantized`` on exactly those three, all reading one mode tensor:
the fused op leaves unwritten whichever the mode does not read.
``NestedFPConfig`` installs the pass as vLLM's ``post_grad_custom_post_pass`` unless one is set already.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch._inductor.pattern_matcher import Match, PatternMatcherPass, fwd_only, gen_pattern, register_graph_pattern

from kernels import ops  # noqa: F401 - registers the nestedfp ops the pattern and replacement call
from kernels.reference import quantize_per_token
from vllm.compilation.passes.inductor_pass import InductorPass
from vllm.model_executor.layers.activation import SiluAndMul

logger = logging.getLogger(__name__)

PASS_KEY = "post_grad_custom_post_pass"  # the inductor_compile_config key vLLM runs a user's pass from
_LINEAR = torch.ops.nestedfp.linear_prequantized.default
_FUSED = torch.ops.nestedfp.silu_mul_codes.default


def _search(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = SiluAndMul.forward_native(gate_up)
    return (x, *quantize_per_token(x))


def _replacement(gate_up: torch.Tensor, mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _FUSED(gate_up, mode)


def _mode_of_sole_consumers(match: Match) -> torch.fx.Node | None:
    """The mode node of the ``linear_prequantized`` calls that are the only users of the match's three outputs
    outside the match, if there is one."""
    x, codes, scales = match.output_nodes()
    users = (set(x.users) | set(codes.users) | set(scales.users)) - set(match.nodes)
    if not users or any(u.target is not _LINEAR or tuple(u.args[:3]) != (x, codes, scales) for u in users):
        return None
    modes = {u.args[5] for u in users}
    return modes.pop() if len(modes) == 1 else None


@functools.cache
def _patterns() -> PatternMatcherPass:
    """The pattern, traced once per process. Its sizes and dtypes are wildcards (the matcher ignores literal
    ints, floats and dtypes), so one trace matches every width and every 16-bit activation dtype."""
    patterns = PatternMatcherPass(pass_name="nestedfp_silu_codes")

    @register_graph_pattern(gen_pattern(_search, [torch.empty(5, 8, dtype=torch.float16)], fwd_only),
                            pass_dict=patterns)
    def _fuse(match: Match, gate_up: torch.fx.Node) -> None:
        mode = _mode_of_sole_consumers(match)
        if mode is not None:
            match.replace_by_example(_replacement, [gate_up, mode])
            SiluCodesPass.replaced += 1

    return patterns


class SiluCodesPass(InductorPass):
    """The pass, for ``inductor_compile_config["post_grad_custom_post_pass"]``; stateless, so copies agree."""

    replaced = 0  # matches replaced in this process, for reports and tests

    def __call__(self, graph: torch.fx.Graph) -> None:
        # A replacement erases the nodes it matched; vLLM's post-pass cleanup removes anything left dead.
        n = _patterns().apply(graph)
        logger.debug("nestedfp: %d SiLU-and-mul + quantization patterns matched", n)

    def uuid(self) -> str:
        return InductorPass.hash_source(self, _search, _mode_of_sole_consumers, quantize_per_token,
                                        SiluAndMul.forward_native)


def install(compile_config: dict) -> bool:
    """Adds the pass to a vLLM ``inductor_compile_config``; False where another pass holds the slot."""
    current = compile_config.get(PASS_KEY)
    if current is None:
        compile_config[PASS_KEY] = SiluCodesPass()
        return True
    return isinstance(current, SiluCodesPass)
