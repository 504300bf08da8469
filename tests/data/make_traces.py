"""Regenerates the recorded ReplicaStats traces used by tests/test_policies.py.

Shapes follow what a vLLM replica reports every 200 ms under a load burst; noise is seeded so
the files are reproducible: ``python tests/data/make_traces.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DT, T0, BUDGET = 0.2, 1_700_000_000.0, 8192
PROMPT_TOKENS_PER_S_PER_WAITING = 2000  # queued prompts are prefilled at this rate each


def sample(i: int, waiting: float, running: float, rng: random.Random, mode: str = "fp16") -> dict:
    waiting = max(0, round(waiting + rng.uniform(-1, 1)))
    running = max(0, round(running))
    busy = running > 0
    sched = min(BUDGET, 40 * running + 300 * min(waiting, 10) + rng.uniform(0, 50)) if busy else 0.0
    return {
        "replica_id": "r0",
        "mode": mode,
        "num_running": running,
        "num_waiting": waiting,
        "kv_cache_usage": round(min(1.0, running / 64), 3),
        "ttft_p50": round(0.05 + 0.04 * waiting, 4) if busy else None,
        "ttft_p90": round(0.08 + 0.06 * waiting + rng.uniform(0, 0.02), 4) if busy else None,
        "tpot_p50": round(0.015 + 0.0004 * running, 4) if busy else None,
        "tpot_p90": round(0.02 + 0.0005 * running + rng.uniform(0, 0.002), 4) if busy else None,
        "tokens_per_s": round(running / (0.02 + 0.0005 * running), 1) if busy else 0.0,
        "scheduled_tokens_per_step": round(sched, 1),
        "max_num_batched_tokens": BUDGET,
        "timestamp": round(T0 + i * DT, 3),
    }


def with_token_counters(samples: list[dict]) -> list[dict]:
    """Cumulative prompt and output token counters, as a replica reports them, from each sample's rates."""
    prompt = output = 0.0
    for s in samples:
        prompt += PROMPT_TOKENS_PER_S_PER_WAITING * s["num_waiting"] * DT
        output += s["tokens_per_s"] * DT
        s["prompt_tokens_total"], s["output_tokens_total"] = int(prompt), int(output)
    return samples


def burst() -> list[dict]:
    """30 s: idle 5 s, queue ramps to ~24 over 5 s, holds 10 s, drains over 5 s, idle 5 s."""
    rng = random.Random(0)
    out = []
    for i in range(150):
        if i < 25:
            w, run = 0, 2
        elif i < 50:
            w, run = 24 * (i - 25) / 25, 2 + 62 * (i - 25) / 25
        elif i < 100:
            w, run = 24, 64
        elif i < 125:
            w, run = 24 * (125 - i) / 25, 64 - 62 * (i - 100) / 25
        else:
            w, run = 0, 2
        out.append(sample(i, w, run, rng))
    return with_token_counters(out)


def queue_pattern(seed: int, waiting_at) -> list[dict]:
    """20 s at 32 running requests with the queue length ``waiting_at(i)`` at sample i."""
    rng = random.Random(seed)
    out = []
    for i in range(100):
        s = sample(i, 0, 32, rng)
        s["num_waiting"] = waiting_at(i)
        out.append(s)
    return with_token_counters(out)


def oscillating() -> list[dict]:
    """20 s of a queue swinging 3 <-> 7 every sample: inside any sane hysteresis band."""
    return queue_pattern(1, lambda i: 3 if i % 2 == 0 else 7)


def spiky() -> list[dict]:
    """20 s of a queue jumping 0 <-> 12 every second: across the whole band, over and over."""
    return queue_pattern(2, lambda i: 12 if (i // 5) % 2 else 0)


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, fn in (("burst", burst), ("oscillating", oscillating), ("spiky", spiky)):
        (here / f"{name}.json").write_text(json.dumps(fn(), indent=None).replace("}, {", "},\n {") + "\n")
