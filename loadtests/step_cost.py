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
"""

from __future__ import annotations

import json
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
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


def step_samples(processes: dict[Any, list[dict[str, Any]]], start: float,
                 end: float) -> list[tuple[int, int, float]]:
    """(prompt tokens, output tokens, seconds) of each step inside [start, end] that followed a busy step, from
    each process's records (``offline.by_process``)."""
    out = []
    for rows in processes.values():
        times = [r["t"] for r in rows]
        for prev, cur in pairwise(rows[bisect_left(times, start):bisect_right(times, end)]):
            dt = cur["t"] - prev["t"]
            busy = prev["prompt_tokens"] + prev["gen_tokens"] > 0 and cur["prompt_tokens"] + cur["gen_tokens"] > 0
            if busy and 0 < dt <= MAX_STEP_S:
                out.append((cur["prompt_tokens"], cur["gen_tokens"], dt))
    return out


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
    for start, end, mode in mode_spans(report):
        per_mode.setdefault(mode, []).extend(step_samples(processes, start, end))
    return {"label": report["run"].get("label"), "samples": per_mode,
            "fits": {m: fit(s) if len(s) >= 3 else None for m, s in per_mode.items()}}


def _describe(name: str, f: dict[str, float] | None) -> str:
    if f is None:
        return f"  {name}: too few steps to fit"
    return (f"  {name}: {f['steps']} steps, overhead {f['overhead_s'] * 1e3:.2f} ms, "
            f"{f['s_per_prompt_token']:.3g} s/prompt token, {f['s_per_output_token']:.3g} s/output token, "
            f"R^2 {f['r2']:.2f}, mean step {f['mean_step_s'] * 1e3:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    a = step_log_parser("python -m loadtests.step_cost", __doc__, "report.json of each run to fit (static runs fit best)",
                        "also write the fits as JSON").parse_args(argv)
    steps = read_jsonl(a.steps)
    results = per_report(
        a.reports, lambda rep: run_costs(steps, rep),
        lambda r: [f"{r['label']}:"] + [_describe(m, f) for m, f in sorted(r["fits"].items())],
    )
    pooled = {}
    for mode in sorted({m for r in results for m in r["samples"]}):
        samples = [s for r in results for s in r["samples"].get(mode, [])]
        pooled[mode] = fit(samples) if len(samples) >= 3 else None
        print(_describe(f"all runs, {mode}", pooled[mode]))
    if pooled.get("fp16"):
        f = pooled["fp16"]
        params = {k: float(f"{f[k]:.2g}") for k in ("s_per_prompt_token", "s_per_output_token")}
        print(f"fp16_load params: {json.dumps(params)}")
    if a.out:
        a.out.write_text(json.dumps({"runs": [{k: v for k, v in r.items() if k != "samples"} for r in results],
                                     "pooled": pooled}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
