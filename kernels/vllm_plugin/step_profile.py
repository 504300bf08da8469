"""Where an engine's GPU time goes: kernel time by kind (linear layers, attention, fused elementwise, ...).

Why: engine throughput ratios (``bench_engine``) say how far NestedFP is from its targets, not why. Summing
the kernels of a whole workload by kind says which part of a step the linear layers are, so what any FP8
GEMM could gain at most (Amdahl), and which kind of kernel makes up NestedFP's FP16-mode gap.

    python -m kernels.vllm_plugin.step_profile --model /root/models/llama-3.1-8b --out profile.json \
        [--variants vllm_fp16,nestedfp_fp16,nestedfp_fp8,vllm_fp8]

Each variant runs in a fresh process with ``bench_engine``'s engine settings and workloads (CUDA graphs and
torch.compile on). Per workload: a warm-up generation, then the workload's generation under
``torch.profiler`` (CUDA activity only), started and stopped in the worker through ``collective_rpc``
(``start_kernel_profile`` / ``stop_kernel_profile`` of the worker extension); the worker parses its trace and
returns the summary. Kernel durations are the GPU's; wall times under the profiler are not throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict

# Kernel kinds, first match wins (on the lower-cased name). "elementwise" is what torch.compile generates
# (RMSNorm, SiLU-and-mul, rotary embedding, residual adds, and the fused per-token quantization) or vLLM's
# kernels for the same, and our mode-aware SiLU-and-mul and RMSNorm (``silu_mul_codes_kernel``,
# ``rms_norm_codes_kernel``) that replace some of them. The KV-cache write (``reshape_and_cache_flash``) comes
# before attention, attention before GEMM: FlashAttention 3's kernels are CUTLASS device kernels with "sm90" in
# their names.
CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("nestedfp", re.compile(r"nested_fp16|nested_fp8|nested_dual|act_quant_kernel|merge_kernel|nestedfp::linear")),
    ("elementwise", re.compile(r"^triton_(poi|red|per)_|rms_norm|silu|rotary|act_and_mul")),  # torch.compile's
    ("kv_cache", re.compile(r"reshape_and_cache|concat_and_cache|cache_kernel")),
    ("attention", re.compile(r"flash|fmha|attn|attention|paged")),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|scaled_mm|sm90_|aten::mm|aten::addmm|aten::linear")),
    ("memcpy", re.compile(r"^memcpy|^memset")),
]
LINEAR_KINDS = ("nestedfp", "gemm")  # the linear layers' GEMMs (and the LM head's, a plain GEMM everywhere)
TOP = 6  # kernels listed per kind

_profiler = None
_started = 0.0
_kinds: tuple[str, ...] = ()  # the trace events the running window sums: kernels, or CPU ops off the GPU


def kernel_category(name: str) -> str:
    """The kind of a kernel (or, on the CPU, an op) by its name: ``CATEGORIES``' first match, else "other"."""
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if pattern.search(low):
            return cat
    return "other"


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: GPU time with at least one kernel running."""
    busy, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def summarize(events: list[dict], kinds: tuple[str, ...] = ("kernel", "gpu_memcpy", "gpu_memset")) -> dict:
    """Chrome-trace events (``ph`` X) of the given ``cat`` kinds, summed by kernel kind: time, count and the
    largest kernels of each; plus the GPU's busy time (union of kernel intervals) and span."""
    per: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "count": 0, "names": defaultdict(lambda: [0.0, 0])})
    intervals = []
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in kinds:
            continue
        name, dur, ts = e.get("name", ""), float(e.get("dur", 0.0)), float(e.get("ts", 0.0))
        c = per[kernel_category(name)]
        c["us"] += dur
        c["count"] += 1
        c["names"][name[:160]][0] += dur
        c["names"][name[:160]][1] += 1
        intervals.append((ts, ts + dur))
    total = sum(c["us"] for c in per.values())
    out = {
        "kernels": len(intervals), "kernel_us": total, "busy_us": _busy_us(intervals),
        "span_us": (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else 0.0,
        "categories": {},
    }
    for cat, c in sorted(per.items(), key=lambda kv: -kv[1]["us"]):
        top = sorted(c["names"].items(), key=lambda kv: -kv[1][0])[:TOP]
        out["categories"][cat] = {"us": c["us"], "count": c["count"], "share": c["us"] / total if total else 0.0,
                                  "top": [[n, us, k] for n, (us, k) in top]}
    return out


def start() -> None:
    """Starts recording this process's kernels (CPU ops where there is no GPU: the plumbing's test)."""
    global _profiler, _started, _kinds
    import torch
    from torch.profiler import ProfilerActivity, profile

    if _profiler is not None:
        raise RuntimeError("a kernel profile is already running")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        act, _kinds = ProfilerActivity.CUDA, ("kernel", "gpu_memcpy", "gpu_memset")
    else:
        act, _kinds = ProfilerActivity.CPU, ("cpu_op",)
    _profiler = profile(activities=[act])
    _profiler.start()
    _started = time.perf_counter()


def stop() -> dict:
    """Stops the recording and returns ``summarize`` of it, with the wall time of the window."""
    global _profiler
    import torch

    if _profiler is None:
        raise RuntimeError("no kernel profile is running")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - _started
    prof, _profiler = _profiler, None
    prof.stop()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    return {"wall_s": wall, **summarize(events, _kinds)}


def run_variant(model: str, name: str, workloads: list[str]) -> dict:
    """One variant's kernel summaries, a workload at a time (``bench_engine``'s engine and workloads)."""
    from kernels.vllm_plugin.bench_engine import open_engine, workload

    llm, _ = open_engine(model, name)
    out = {"variant": name}
    for wl in workloads:
        prompts, params = workload(wl)
        llm.generate(prompts[:16], params, use_tqdm=False)  # warm-up
        llm.collective_rpc("start_kernel_profile")
        llm.generate(prompts, params, use_tqdm=False)
        out[wl] = llm.collective_rpc("stop_kernel_profile")[0]
        print(f"{name:14s} {wl:28s} busy {out[wl]['busy_us'] / 1e3:9.1f} ms", flush=True)
    return out


def analysis(variants: dict[str, dict], workloads: list[str]) -> dict:
    """Per workload: the linear layers' share of the FP16 baseline's GPU time and the speedup an FP8 GEMM at
    exactly twice FP16 speed would bound (GPU time only, so the real bound is lower); per variant, its
    GPU time and each kind's difference from the baseline."""
    base_all = variants.get("vllm_fp16") or {}
    out = {}
    for wl in workloads:
        base = base_all.get(wl)
        if not base:
            continue
        cats = base["categories"]
        linear = sum(cats.get(k, {}).get("us", 0.0) for k in LINEAR_KINDS)
        row = {"baseline_busy_ms": base["busy_us"] / 1e3, "linear_share": linear / base["kernel_us"],
               "fp8_bound_at_2x_gemm": base["kernel_us"] / (base["kernel_us"] - linear / 2), "variants": {}}
        for name, r in variants.items():
            s = (r or {}).get(wl)
            if not s or name == "vllm_fp16":
                continue
            kinds = set(cats) | set(s["categories"])
            row["variants"][name] = {
                "busy_ratio_vs_baseline": base["busy_us"] / s["busy_us"],
                "kernel_ratio_vs_baseline": base["kernel_us"] / s["kernel_us"],
                "linear_ratio_vs_baseline": linear / sum(s["categories"].get(k, {}).get("us", 0.0)
                                                         for k in LINEAR_KINDS),
                "delta_ms_by_kind": {k: (s["categories"].get(k, {}).get("us", 0.0)
                                         - cats.get(k, {}).get("us", 0.0)) / 1e3 for k in sorted(kinds)},
            }
        out[wl] = row
    return out


def main(argv: list[str] | None = None) -> None:
    from kernels.vllm_plugin.bench_engine import ALL_VARIANTS, VARIANTS, WORKLOADS, run_child

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/root/models/llama-3.1-8b")
    ap.add_argument("--out", default="step_profile.json")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    workloads = a.workloads.split(",")
    if a.one:
        print("RESULT " + json.dumps(run_variant(a.model, a.one, workloads)), flush=True)
        return
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": a.model, "command": " ".join(sys.argv),
               "workloads": {w: WORKLOADS[w] for w in workloads}, "variants": {}}
    for name in a.variants.split(","):
        results["variants"][name] = run_child("kernels.vllm_plugin.step_profile", a.model, "--workloads",
                                              a.workloads, "--one", name, env=ALL_VARIANTS[name].get("env"))
        results["analysis"] = analysis(results["variants"], workloads)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    for wl, row in results["analysis"].items():
        print(f"{wl}: linear share {row['linear_share']:.3f}, FP8 bound at 2x GEMMs "
              f"{row['fp8_bound_at_2x_gemm']:.3f}x")
        for name, v in row["variants"].items():
            deltas = ", ".join(f"{k} {d:+.1f}" for k, d in v["delta_ms_by_kind"].items() if abs(d) >= 0.05)
            print(f"  {name:14s} busy x{v['busy_ratio_vs_baseline']:.3f} linear x{v['linear_ratio_vs_baseline']:.3f}"
                  f"  ms vs baseline: {deltas}")


if __name__ == "__main__":
    main()
