"""The post-grad pass that makes SiLU-and-mul and RMSNorm before a nested layer mode-aware, under a real Inductor
compile (CPU; the GPU runs the same graphs in tests/test_prequantized_cuda.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from kernels.nested_format import nested_split  # noqa: E402
from kernels.ops import new_mode_tensor, set_host_mode  # noqa: E402
from kernels.reference import (  # noqa: E402
    nested_linear_prequantized,
    quantize_per_token,
    rms_norm_codes_reference,
    silu_mul_codes_reference,
    ulps_apart,
)
from kernels.vllm_plugin import codes_pass  # noqa: E402
from kernels.vllm_plugin.codes_pass import CodesPass  # noqa: E402
from vllm import ir  # noqa: E402
from vllm.model_executor.layers.activation import SiluAndMul  # noqa: E402


def _compile_with_pass(fn, families=codes_pass.FAMILIES):
    def run(*args):
        with torch._inductor.config.patch(post_grad_custom_post_pass=CodesPass(families), fx_graph_cache=False):
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
    before = CodesPass.replaced["silu_mul"]
    g = (torch.randn(7, 80) * 3).half()
    try:
        for name in ("fp16", "fp8", "fp16"):
            set_host_mode(mode, name)
            with torch.compiler.set_stance("fail_on_recompile" if name != "fp16" else "default"):
                got = compiled(g)
            assert torch.equal(got, down_proj(*silu_mul_codes_reference(g))), name
    finally:
        set_host_mode(mode, "fp16")
    assert CodesPass.replaced["silu_mul"] == before + 1


def test_the_pass_leaves_silu_and_mul_alone_when_x_has_another_reader(mlp_tail):
    """x returned as well: the fused op would leave it unwritten in FP8 mode, so the pass must not fire."""
    tail, down_proj, mode = mlp_tail

    def tail_and_x(gate_up):
        x = SiluAndMul.forward_native(gate_up)
        return down_proj(x, *quantize_per_token(x)), x

    compiled = _compile_with_pass(tail_and_x)
    before = CodesPass.replaced["silu_mul"]
    g = (torch.randn(5, 80) * 3).half()
    try:
        set_host_mode(mode, "fp8")
        y, x = compiled(g)
        rx = silu_mul_codes_reference(g)[0]
        assert ulps_apart(x, rx) <= 1
        assert not y.isnan().any()
    finally:
        set_host_mode(mode, "fp16")
    assert CodesPass.replaced["silu_mul"] == before


def test_install_takes_a_free_slot_and_keeps_a_users_pass():
    config: dict = {}
    assert codes_pass.install(config, ("rms_norm",))
    assert isinstance(config[codes_pass.PASS_KEY], CodesPass) and config[codes_pass.PASS_KEY].families == ("rms_norm",)
    assert codes_pass.install(config)  # already ours
    theirs = {codes_pass.PASS_KEY: object()}
    assert not codes_pass.install(theirs)
    assert not isinstance(theirs[codes_pass.PASS_KEY], CodesPass)


def test_the_pass_uuid_is_stable_across_instances():
    """vLLM copies the Inductor config and keys its compile cache on the pass's uuid."""
    assert CodesPass().uuid() == CodesPass().uuid()
    assert CodesPass(("silu_mul",)).uuid() != CodesPass().uuid()  # a different graph comes out
    with pytest.raises(ValueError, match="unknown families"):
        CodesPass(("layer_norm",))


@pytest.fixture
def decoder_layer_inputs():
    """vLLM's two RMSNorms of a decoder layer, each feeding a nested layer, as the compiled model calls them:
    ``rms_norm`` (the first layer's input norm) and ``fused_add_rms_norm`` (every other norm)."""
    hidden, eps = 40, 1e-5
    nw = nested_split((torch.randn(24, hidden) * 0.05).half())
    weight, mode = (torch.rand(hidden) + 0.5).half(), new_mode_tensor("cpu")

    def nested(x, q, s):
        return torch.ops.nestedfp.linear_prequantized(x, q, s, nw.upper, nw.lower, mode, nw.scale_exp, None)

    def layer(h, attn_out):
        y0 = ir.ops.rms_norm(h, weight, eps, None)
        y, residual = ir.ops.fused_add_rms_norm(attn_out, h, weight, eps, None)
        return nested(y0, *quantize_per_token(y0)) + nested(y, *quantize_per_token(y)), residual

    def y_read_twice(h, attn_out):  # the norm's y returned as well as fed to the nested layer
        y, residual = ir.ops.fused_add_rms_norm(attn_out, h, weight, eps, None)
        return nested(y, *quantize_per_token(y)), residual, y

    def reference(h, attn_out, name):
        y0, q0, s0 = rms_norm_codes_reference(h, None, weight, eps)
        y, residual, q, s = rms_norm_codes_reference(attn_out, h, weight, eps)
        return nested_linear_prequantized(y0, q0, s0, nw, name) + nested_linear_prequantized(y, q, s, nw, name), residual

    return dict(layer=layer, y_read_twice=y_read_twice, reference=reference, mode=mode, weight=weight, eps=eps,
                planes=(nw.upper, nw.lower), scale_exp=nw.scale_exp,
                inputs=(torch.randn(7, hidden).half(), (torch.randn(7, hidden) * 4).half()))


@pytest.mark.parametrize("ir_nodes", [True, False], ids=["ir_nodes_as_on_cuda", "native_code_as_on_cpu"])
def test_rms_norms_before_nested_layers_become_the_mode_aware_ops_and_follow_mode_flips(decoder_layer_inputs,
                                                                                      ir_nodes):
    """Both forms vLLM hands the pass: its IR ops as single nodes (CUDA, lowered after the pass) and their native
    decomposition (CPU). Each mode's outputs are the reference's bit for bit, the new residual in both modes."""
    d = decoder_layer_inputs
    before = CodesPass.replaced["rms_norm"]
    try:
        with ir.enable_torch_wrap(ir_nodes):
            compiled = _compile_with_pass(d["layer"], ("rms_norm",))
            for name in ("fp16", "fp8", "fp16"):
                set_host_mode(d["mode"], name)
                with torch.compiler.set_stance("fail_on_recompile" if name != "fp16" else "default"):
                    out, residual = compiled(*d["inputs"])
                want, want_residual = d["reference"](*d["inputs"], name)
                assert torch.equal(out, want) and torch.equal(residual, want_residual), name
    finally:
        set_host_mode(d["mode"], "fp16")
    assert CodesPass.replaced["rms_norm"] == before + 2


@pytest.mark.parametrize("ir_nodes", [True, False], ids=["ir_nodes_as_on_cuda", "native_code_as_on_cpu"])
def test_the_pass_leaves_an_rms_norm_alone_when_its_output_has_another_reader(decoder_layer_inputs, ir_nodes):
    """y returned as well: the fused op would leave it unwritten in FP8 mode, so the pass must not fire."""
    d = decoder_layer_inputs
    before = CodesPass.replaced["rms_norm"]
    try:
        with ir.enable_torch_wrap(ir_nodes):
            set_host_mode(d["mode"], "fp8")
            _, _, y = _compile_with_pass(d["y_read_twice"], ("rms_norm",))(*d["inputs"])
    finally:
        set_host_mode(d["mode"], "fp16")
    h, attn_out = d["inputs"]
    ry = rms_norm_codes_reference(attn_out, h, d["weight"], d["eps"])[0]
    assert ulps_apart(y, ry) <= 1  # Inductor's own rounding
    assert CodesPass.replaced["rms_norm"] == before


def test_families_the_pass_was_not_given_are_left_to_inductor(decoder_layer_inputs, mlp_tail):
    before = dict(CodesPass.replaced)
    with ir.enable_torch_wrap(True):
        _compile_with_pass(decoder_layer_inputs["layer"], ("silu_mul",))(*decoder_layer_inputs["inputs"])
    _compile_with_pass(mlp_tail[0], ("rms_norm",))((torch.randn(3, 80)).half())
    assert CodesPass.replaced == before


@pytest.mark.parametrize("ir_nodes", [True, False], ids=["ir_nodes_as_on_cuda", "native_code_as_on_cpu"])
def test_a_weightless_rms_norm_is_left_to_inductor(decoder_layer_inputs, ir_nodes):
    """vLLM passes ``weight=None`` for norms without one; the mode-aware ops take a weight, so no swap, no crash."""
    d = decoder_layer_inputs
    def weightless(h):
        y = ir.ops.rms_norm(h, None, d["eps"], None)
        q, s = quantize_per_token(y)
        return torch.ops.nestedfp.linear_prequantized(y, q, s, *d["planes"], d["mode"], d["scale_exp"], None)

    before = CodesPass.replaced["rms_norm"]
    with ir.enable_torch_wrap(ir_nodes):
        out = _compile_with_pass(weightless, ("rms_norm",))(d["inputs"][0])
    assert not out.isnan().any()
    assert CodesPass.replaced["rms_norm"] == before


def _installed_after_build(monkeypatch, **env: str):
    """What ``NestedFPConfig`` leaves in vLLM's Inductor config while a model is built, in this environment."""
    from kernels.vllm_plugin import nestedfp_method
    from vllm.config import VllmConfig, set_current_vllm_config

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = VllmConfig()
    with set_current_vllm_config(config):
        nestedfp_method._install_codes_pass()
    return config.compilation_config.inductor_compile_config.get(codes_pass.PASS_KEY)


def test_the_plugin_installs_the_families_its_switches_leave_on(monkeypatch):
    assert _installed_after_build(monkeypatch).families == codes_pass.FAMILIES
    assert _installed_after_build(monkeypatch, NESTEDFP_NORM_CODES="0").families == ("silu_mul",)
    assert _installed_after_build(monkeypatch, NESTEDFP_SILU_CODES="0", NESTEDFP_NORM_CODES="1").families == (
        "rms_norm",)
    assert _installed_after_build(monkeypatch, NESTEDFP_SILU_CODES="0", NESTEDFP_NORM_CODES="0") is None


def test_a_vllm_the_pass_cannot_load_with_still_builds_the_model_without_it(monkeypatch, caplog):
    """The pass follows vLLM internals (its IR ops, its pass base); where they are missing the model is built with
    Inductor's own fusion, and a warning says so."""
    import sys

    import kernels.vllm_plugin as plugin

    monkeypatch.delattr(plugin, "codes_pass")
    monkeypatch.setitem(sys.modules, "kernels.vllm_plugin.codes_pass", None)  # the import now raises ImportError
    assert _installed_after_build(monkeypatch) is None
    assert "codes pass is unavailable" in caplog.text
