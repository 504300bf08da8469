"""Shared helpers for tests that start real vLLM engines on the tiny model."""

from __future__ import annotations

import hashlib
import os
import re

import torch
from safetensors.torch import load_file

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = [
    "Beautiful is better than ugly. Explicit is",
    "Return a new object with the elements",
    "The quick brown fox jumps over",
    "If the implementation is hard to explain,",
]


def engine_kwargs(model: str, **overrides) -> dict:
    kw = dict(model=model, dtype="float16", max_model_len=512, seed=0, max_num_seqs=16, max_logprobs=600)
    kw.update(overrides)
    return kw


def checkpoint_linear_weights(model_dir: str) -> dict[str, torch.Tensor]:
    """The checkpoint's linear weights under vLLM's fused layer names (qkv_proj, gate_up_proj)."""
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    for i in layers:
        p = f"model.layers.{i}"
        out[f"{p}.self_attn.qkv_proj"] = torch.cat([sd[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv"])
        out[f"{p}.self_attn.o_proj"] = sd[f"{p}.self_attn.o_proj.weight"]
        out[f"{p}.mlp.gate_up_proj"] = torch.cat([sd[f"{p}.mlp.gate_proj.weight"], sd[f"{p}.mlp.up_proj.weight"]])
        out[f"{p}.mlp.down_proj"] = sd[f"{p}.mlp.down_proj.weight"]
    return out


def digest(w: torch.Tensor) -> str:
    return hashlib.sha256(w.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def checkpoint_bytes(model_dir: str) -> int:
    return sum(t.numel() * t.element_size() for t in load_file(os.path.join(model_dir, "model.safetensors")).values())
