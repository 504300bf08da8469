"""Each mode's cost per token, fitted from the step log: the calibration the ``fp16_load`` policy needs.

Why: that policy predicts how busy fp16 would be at the offered load from two numbers per model and GPU,
seconds per prompt token and per output token. They come from a run, not from a guess: every pair of
consecutive busy steps in the log gives one step time, and a least-squares fit of
``step = overhead + prompt_tokens x s_per_prompt_token + output_tokens x s_per_output_token`` over a
run's steps, taken only while every replica was in one mode, splits it. The output cost absorbs what
grows with the running batch (attention over each request's context), so a fit holds for loads like
the one it was measured on. vLLM counts a prompt's tokens in the step that finishes its prefill, not in the
steps that carry its chunks, so the prompt cost comes out low and the output cost takes up the difference:
the two weigh a load, they are not each token's true price.

It also reports each mode's full steps: those with requests waiting before and after, so the scheduler had more
prefill than the step budget took. They are the steps a prefill burst is made of, and the step budget
(``max_num_batched_tokens``) sets their length. If fp16's full step is at the TPOT SLO, every request
decoding through a burst in fp16 misses it, whatever the policy does. A smaller budget shortens those steps,
and it costs prefill capacity (docs/BENCHMARKS.md, "A 1792-token step budget").
"""

from __future__ import annotations

import json
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from loadtests.jsonl import read_jsonl
from loadtests.offline import by_process, per_report, step_log_parser

MAX_STEP_S = 0.25  # a longer gap between records is idle time or a stall, not a step


def mode_spans(report: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(start, end, mode) spans of the run (unix seconds) in which every replica was in that one mode."""
    run = report["run"]
    start, end = run["t0"], run["t0"] + run["duration_s"] + (run.get("drain_s") or 0.0)
    modes = dict(report.get("modes_at_start") or {})
    spans: list[tuple[float, float, str]] = []
    t = start
    for s in sorted(report.get("switches", []), key=lambda s: s["time"]):
        if not start < s["time"] < end:
            continue
        if len(set(modes.values())) == 1:
            spans.append((t, s["time"], next(iter(modes.values()))))
        modes[s["replica"]], t = s["to"], s["time"]
    if len(set(modes.values())) == 1:
        spans.append((t, end, next(iter(modes.values()))))
    return spans


def busy_steps(processes: dict[Any, list[dict[str, Any]]], start: float,
               end: float) -> Iterator[tuple[dict[str, Any], dict[str, Any], float]]:
    """(previous record, record, seconds) of each step inside [start, end] that followed a busy step, from each
    process's records (``offline.by_process``)."""
    for rows in processes.values():
        times = [r["t"] for r in rows]
        for prev, cur in pairwise(rows[bisect_left(times, start):bisect_right(times, end)]):
            dt = cur["t"] - prev["t"]
            busy = prev["prompt_tokens"] + prev["gen_tokens"] > 0 and cur["prompt_tokens"] + cur["gen_tokens"] > 0
            if busy and 0 < dt <= MAX_STEP_S:
                yield prev, cur, dt


def step_samples(processes: dict[Any, list[dict[str, Any]]], start: float,
                 end: float) -> list[tuple[int, int, float]]:
    """(prompt tokens, output tokens, seconds) of each busy step inside [start, end]."""
    return [(cur["prompt_tokens"], cur["gen_tokens"], dt) for _, cur, dt in busy_steps(processes, start, end)]


def full_step_seconds(processes: dict[Any, list[dict[str, Any]]], start: float, end: float) -> list[float]:
    """Seconds of each busy step inside [start, end] with requests waiting at both ends: a full step budget."""
    return [dt for prev, cur, dt in busy_steps(processes, start, end) if prev["waiting"] > 0 and cur["waiting"] > 0]


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """Count, p50 and p90 of ``values``; None if empty."""
    if not values:
        return None
    p50, p90 = np.percentile(values, [50, 90])
    return {"steps": len(values), "p50_s": float(p50), "p90_s": float(p90)}


def fit(samples: Sequence[tuple[int, int, float]]) -> dict[str, float] | None:
    """Least squares of step seconds on (1, prompt tokens, output tokens); None if they do not determine it."""
    a = np.array([(1.0, p, o) for p, o, _ in samples], dtype=float)
    y = np.array([dt for _, _, dt in samples], dtype=float)
    if np.linalg.matrix_rank(a) < 3:
        return None
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - a @ coef) ** 2).sum())
    return {"steps": len(y), "overhead_s": float(coef[0]), "s_per_prompt_token": float(coef[1]),
            "s_per_output_token": float(coef[2]), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 0.0,
            "mean_step_s": float(y.mean())}


def run_costs(steps: Sequence[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """The fit per mode over one run's single-mode spans, with the samples kept for pooling."""
    processes = by_process(steps)
    per_mode: dict[str, list[tuple[int, int, float]]] = {}
    full: dict[str, list[float]] = {}
    for start, end, mode in mode_spans(report):
        per_mode.setdefault(mode, []).extend(step_samples(processes, start, end))
        full.setdefault(mode, []).extend(full_step_seconds(processes, start, end))
    return {"label": report["run"].get("label"), "samples": per_mode, "full_step_samples": full,
            "fits": {m: fit(s) if len(s) >= 3 else None for m, s in per_mode.items()},
            "full_steps": {m: percentiles(v) for m, v in full.items()}}


def _describe(name: str, f: dict[str, float] | None, full: dict[str, float] | None) -> str:
    if f is None:
        line = f"  {name}: too few steps to fit"
    else:
        line = (f"  {name}: {f['steps']} steps, overhead {f['overhead_s'] * 1e3:.2f} ms, "
                f"{f['s_per_prompt_token']:.3g} s/prompt token, {f['s_per_output_token']:.3g} s/output token, "
                f"R^2 {f['r2']:.2f}, mean step {f['mean_step_s'] * 1e3:.1f} ms")
    if full is None:
        return line + "; no full steps"
    return line + f"; {full['steps']} full steps, p50 {full['p50_s'] * 1e3:.1f} ms, p90 {full['p90_s'] * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    a = step_log_parser("python -m loadtests.step_cost", __doc__, "report.json of each run to fit (static runs fit best)",
                        "also write the fits as JSON").parse_args(argv)
    steps = read_jsonl(a.steps)
    results = per_report(
        a.reports, lambda rep: run_costs(steps, rep),
        lambda r: [f"{r['label']}:"] + [_describe(m, f, r["full_steps"][m]) for m, f in sorted(r["fits"].items())],
    )
    pooled, pooled_full = {}, {}
    for mode in sorted({m for r in results for m in r["samples"]}):
        samples = [s for r in results for s in r["samples"].get(mode, [])]
        pooled[mode] = fit(samples) if len(samples) >= 3 else None
        pooled_full[mode] = percentiles([s for r in results for s in r["full_step_samples"].get(mode, [])])
        print(_describe(f"all runs, {mode}", pooled[mode], pooled_full[mode]))
    if pooled.get("fp16"):
        f = pooled["fp16"]
        params = {k: float(f"{f[k]:.2g}") for k in ("s_per_prompt_token", "s_per_output_token")}
        print(f"fp16_load params: {json.dumps(params)}")
    if a.out:
        drop = ("samples", "full_step_samples")
        a.out.write_text(json.dumps({"runs": [{k: v for k, v in r.items() if k not in drop} for r in results],
                                     "pooled": pooled, "pooled_full_steps": pooled_full}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
