"""End-to-end engine benchmark of NestedFP inside vLLM (run on the GPU box).

``python -m kernels.vllm_plugin.bench_engine --model DIR --out FILE.json`` runs, each in a fresh
process (so GPU memory is released between them) and on the same token-id workloads:
vLLM FP16, ``nestedfp`` in fp16 mode, ``nestedfp`` in fp8 mode, and vLLM's own ``fp8``; then a
switching test: 100 mode flips through ``collective_rpc`` while requests stream, CUDA graphs on.
Dummy weights (``load_format="dummy"``), so only a config directory is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

WORKLOADS = {  # name: (requests, prompt tokens, output tokens)
    "balanced_512in_128out": (256, 512, 128),
    "decode_heavy_128in_512out": (256, 128, 512),
    "prefill_heavy_2048in_16out": (256, 2048, 16),
}
VARIANTS = {
    "vllm_fp16": dict(quantization=None, mode=None),
    "nestedfp_fp16": dict(quantization="nestedfp", mode="fp16"),
    "nestedfp_fp8": dict(quantization="nestedfp", mode="fp8"),
    "vllm_fp8": dict(quantization="fp8", mode=None),
}
# For A/B runs (not in the default list): every layer on nestedfp::linear, which quantizes x itself. Its own
# compile cache, since vLLM's cache key does not see the environment switch and the traced graph differs.
NO_PREQUANTIZE = {"NESTEDFP_PREQUANTIZE": "0", "VLLM_CACHE_ROOT": os.path.expanduser("~/.cache/vllm-no-prequantize")}
NORM_ONLY = {"NESTEDFP_PREQUANTIZE": "qkv_proj,gate_up_proj",  # the layers after an RMSNorm
             "VLLM_CACHE_ROOT": os.path.expanduser("~/.cache/vllm-prequantize-norm-only")}
NO_SILU_CODES = {"NESTEDFP_SILU_CODES": "0",  # Inductor's fused SiLU-and-mul + codes, not codes_pass's op
                 "VLLM_CACHE_ROOT": os.path.expanduser("~/.cache/vllm-no-silu-codes")}
NO_NORM_CODES = {"NESTEDFP_NORM_CODES": "0",  # Inductor's fused RMSNorm + codes, not codes_pass's op
                 "VLLM_CACHE_ROOT": os.path.expanduser("~/.cache/vllm-no-norm-codes")}
EXTRA_VARIANTS = {
    "nestedfp_fp16_no_prequantize": dict(quantization="nestedfp", mode="fp16", env=NO_PREQUANTIZE),
    "nestedfp_fp8_no_prequantize": dict(quantization="nestedfp", mode="fp8", env=NO_PREQUANTIZE),
    "nestedfp_fp16_prequantize_norm_only": dict(quantization="nestedfp", mode="fp16", env=NORM_ONLY),
    "nestedfp_fp8_prequantize_norm_only": dict(quantization="nestedfp", mode="fp8", env=NORM_ONLY),
    "nestedfp_fp16_no_silu_codes": dict(quantization="nestedfp", mode="fp16", env=NO_SILU_CODES),
    "nestedfp_fp8_no_silu_codes": dict(quantization="nestedfp", mode="fp8", env=NO_SILU_CODES),
    "nestedfp_fp16_no_norm_codes": dict(quantization="nestedfp", mode="fp16", env=NO_NORM_CODES),
    "nestedfp_fp8_no_norm_codes": dict(quantization="nestedfp", mode="fp8", env=NO_NORM_CODES),
}
ALL_VARIANTS = {**VARIANTS, **EXTRA_VARIANTS}


def _prompts(n: int, length: int, seed: int, vocab: int = 32000):
    import random

    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    return [TokensPrompt(prompt_token_ids=[rng.randrange(100, vocab) for _ in range(length)]) for _ in range(n)]


def _engine_kwargs(model: str, quantization: str | None) -> dict:
    from kernels.vllm_plugin import WORKER_EXTENSION

    return dict(
        model=model, load_format="dummy", skip_tokenizer_init=True, dtype="float16", seed=0,
        quantization=quantization, worker_extension_cls=WORKER_EXTENSION,
        max_model_len=4096, gpu_memory_utilization=0.85, max_num_seqs=256,
    )


def open_engine(model: str, name: str) -> tuple[Any, dict]:
    """An offline engine for variant ``name``, switched to its mode; returns (engine, variant)."""
    from vllm import LLM

    v = ALL_VARIANTS[name]
    llm = LLM(**_engine_kwargs(model, v["quantization"]))
    if v["mode"]:
        assert llm.collective_rpc("set_precision", args=(v["mode"],)) == [v["mode"]]
    return llm, v


def workload(name: str) -> tuple[list, Any]:
    """Workload ``name``'s prompts and sampling parameters."""
    from vllm import SamplingParams

    n, p_len, o_len = WORKLOADS[name]
    return _prompts(n, p_len, seed=1), SamplingParams(max_tokens=o_len, ignore_eos=True, temperature=0.0,
                                                      detokenize=False)


def run_variant(model: str, name: str) -> dict:
    """Offline throughput of one variant on every workload (CUDA graphs and torch.compile on)."""
    t0 = time.perf_counter()
    llm, v = open_engine(model, name)
    startup = time.perf_counter() - t0
    out = {"variant": name, "startup_s": startup, "weight_bytes": llm.collective_rpc("model_weight_bytes")[0]}
    if v["quantization"] == "nestedfp":
        rep = llm.collective_rpc("nestedfp_report")[0]
        out["nested_layers"] = {k: len(rep[k]) for k in ("nested", "prescaled", "plain", "prequantized")}
        for k in ("silu_codes_fused", "norm_codes_fused"):  # 0 where the compiled graph came from the cache
            out[k] = rep[k]
    for wl, (n, p_len, _) in WORKLOADS.items():
        prompts, params = workload(wl)
        llm.generate(prompts[:16], params, use_tqdm=False)  # warm-up
        t = time.perf_counter()
        res = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t
        out_tokens = sum(len(r.outputs[0].token_ids) for r in res)
        out[wl] = {
            "requests": n, "prompt_tokens": n * p_len, "output_tokens": out_tokens, "seconds": dt,
            "total_tokens_per_s": (n * p_len + out_tokens) / dt, "output_tokens_per_s": out_tokens / dt,
        }
        print(f"{name:14s} {wl:28s} {out[wl]['total_tokens_per_s']:10.0f} tok/s", flush=True)
    return out


def run_child(module: str, model: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    """``python -m module --model model *extra`` in a fresh process (GPU memory freed after it); its last
    ``RESULT {json}`` line, or an error record with the tail of its stderr."""
    p = subprocess.run([sys.executable, "-m", module, "--model", model, *extra],
                       capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        print(p.stdout[-3000:], p.stderr[-6000:], sep="\n", file=sys.stderr)
        return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-2000:]}
    return json.loads(lines[-1][7:])


async def _switch_test(model: str, switches: int = 100, interval_s: float = 0.25) -> dict:
    """Flip modes while 128 requests stream; record each flip's latency and per-mode decode rate."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**_engine_kwargs(model, "nestedfp")))
    params = SamplingParams(max_tokens=3000, ignore_eos=True, temperature=0.0, detokenize=False)
    prompts = _prompts(128, 256, seed=2)
    tokens: list[tuple[float, int]] = []  # (time, new tokens)
    finished, failed = 0, 0

    async def one(p):
        nonlocal finished, failed
        seen = 0
        try:
            async for o in engine.generate(p, params, request_id=uuid.uuid4().hex):
                n = len(o.outputs[0].token_ids)
                tokens.append((time.perf_counter(), n - seen))
                seen = n
            finished += seen == params.max_tokens
        except Exception:
            failed += 1

    tasks = [asyncio.create_task(one(p)) for p in prompts]
    await asyncio.sleep(5.0)  # past prefill, into steady decode
    latencies, windows, mode = [], [], "fp16"
    for _ in range(switches):
        mode = "fp8" if mode == "fp16" else "fp16"
        t = time.perf_counter()
        assert await engine.collective_rpc("set_precision", args=(mode,)) == [mode]
        done = time.perf_counter()
        latencies.append(done - t)
        await asyncio.sleep(interval_s)
        windows.append((mode, done, time.perf_counter()))
    await asyncio.gather(*tasks)
    engine.shutdown()

    def rate(m):
        toks = secs = 0.0
        for wm, a, b in windows:
            if wm == m:
                toks += sum(n for ts, n in tokens if a <= ts < b)
                secs += b - a
        return toks / secs if secs else None

    lat = sorted(latencies)
    return {
        "switches": switches, "interval_s": interval_s, "requests": len(prompts), "failed": failed,
        "completed_full_length": finished,
        "switch_latency_ms": {"p50": 1e3 * lat[len(lat) // 2], "p90": 1e3 * lat[int(0.9 * (len(lat) - 1))],
                              "max": 1e3 * lat[-1], "mean": 1e3 * statistics.mean(lat)},
        "decode_tokens_per_s_in_fp16_windows": rate("fp16"),
        "decode_tokens_per_s_in_fp8_windows": rate("fp8"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/root/models/llama-3.1-8b")
    ap.add_argument("--out", default="engine_bench.json")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated; also {', '.join(EXTRA_VARIANTS)}")
    ap.add_argument("--skip-switch-test", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--switch-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(run_variant(a.model, a.one)), flush=True)
        return
    if a.switch_only:
        print("RESULT " + json.dumps(asyncio.run(_switch_test(a.model))), flush=True)
        return
    results = {"date": time.strftime("%Y-%m-%d"), "model": a.model, "workloads": WORKLOADS, "variants": {}}

    def child(*extra: str, env: dict[str, str] | None = None) -> dict:
        return run_child("kernels.vllm_plugin.bench_engine", a.model, *extra, env=env)

    for name in a.variants.split(","):
        results["variants"][name] = child("--one", name, env=ALL_VARIANTS[name].get("env"))
        json.dump(results, open(a.out, "w"), indent=1)
    if not a.skip_switch_test:
        results["switching"] = child("--switch-only")
    json.dump(results, open(a.out, "w"), indent=1)
    base = results["variants"].get("vllm_fp16", {})
    for wl in WORKLOADS:
        b = base.get(wl, {}).get("total_tokens_per_s")
        row = [f"{wl:28s}"]
        for name, r in results["variants"].items():
            v = (r or {}).get(wl, {}).get("total_tokens_per_s")
            row.append(f"{name}={v:.0f}" + (f" ({v / b:.3f}x)" if b and v else "") if v else f"{name}=n/a")
        print("  ".join(row))
    print(json.dumps(results.get("switching"), indent=1))


if __name__ == "__main__":
    main()
