"""The post-grad pass that makes SiLU-and-mul before a nested layer mode-aware, under a real Inductor compile
(CPU; the GPU runs the same graphs in tests/test_prequantized_cuda.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from kernels.nested_format import nested_split  # noqa: E402
from kernels.ops import new_mode_tensor, set_host_mode  # noqa: E402
from kernels.reference import quantize_per_token, silu_mul_codes_reference  # noqa: E402
from kernels.vllm_plugin import silu_codes_pass  # noqa: E402
from kernels.vllm_plugin.silu_codes_pass import SiluCodesPass  # noqa: E402
from vllm.model_executor.layers.activation import SiluAndMul  # noqa: E402


def _compile_with_pass(fn):
    def run(*args):
        with torch._inductor.config.patch(post_grad_custom_post_pass=SiluCodesPass(), fx_graph_cache=False):
            return compiled(*args)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    return run


@pytest.fixture
def mlp_tail():
    """What vLLM's compiled MLP does after gate_up_proj with the nestedfp method on down_proj."""
    w = (torch.randn(24, 40) * 0.05).half()
    nw, mode = nested_split(w), new_mode_tensor("cpu")

    def down_proj(x, q, s):
        return torch.ops.nestedfp.linear_prequantized(x, q, s, nw.upper, nw.lower, mode, nw.scale_exp, None)

    def tail(gate_up):
        x = SiluAndMul.forward_native(gate_up)
        return down_proj(x, *quantize_per_token(x))

    return tail, down_proj, mode


def test_silu_and_mul_before_a_nested_layer_becomes_the_mode_aware_op_and_follows_mode_flips(mlp_tail):
    tail, down_proj, mode = mlp_tail
    compiled = _compile_with_pass(tail)
    before = SiluCodesPass.replaced
    g = (torch.randn(7, 80) * 3).half()
    try:
        for name in ("fp16", "fp8", "fp16"):
            set_host_mode(mode, name)
            with torch.compiler.set_stance("fail_on_recompile" if name != "fp16" else "default"):
                got = compiled(g)
            assert torch.equal(got, down_proj(*silu_mul_codes_reference(g))), name
    finally:
        set_host_mode(mode, "fp16")
    assert SiluCodesPass.replaced == before + 1


def test_the_pass_leaves_silu_and_mul_alone_when_x_has_another_reader(mlp_tail):
    """x returned as well: the fused op would leave it unwritten in FP8 mode, so the pass must not fire."""
    tail, down_proj, mode = mlp_tail

    def tail_and_x(gate_up):
        x = SiluAndMul.forward_native(gate_up)
        return down_proj(x, *quantize_per_token(x)), x

    compiled = _compile_with_pass(tail_and_x)
    before = SiluCodesPass.replaced
    g = (torch.randn(5, 80) * 3).half()
    try:
        set_host_mode(mode, "fp8")
        y, x = compiled(g)
        rx = silu_mul_codes_reference(g)[0]
        assert (x.view(torch.int16).int() - rx.view(torch.int16).int()).abs().max() <= 1
        assert not y.isnan().any()
    finally:
        set_host_mode(mode, "fp16")
    assert SiluCodesPass.replaced == before


def test_install_takes_a_free_slot_and_keeps_a_users_pass():
    config: dict = {}
    assert silu_codes_pass.install(config) and isinstance(config[silu_codes_pass.PASS_KEY], SiluCodesPass)
    assert silu_codes_pass.install(config)  # already ours
    theirs = {silu_codes_pass.PASS_KEY: object()}
    assert not silu_codes_pass.install(theirs)
    assert not isinstance(theirs[silu_codes_pass.PASS_KEY], SiluCodesPass)


def test_the_pass_uuid_is_stable_across_instances():
    """vLLM copies the Inductor config and keys its compile cache on the pass's uuid."""
    assert SiluCodesPass().uuid() == SiluCodesPass().uuid()
