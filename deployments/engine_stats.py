"""Per-step engine signals for the precision policy, taken from vLLM's own stat-logger hook.

vLLM loads ``vllm.stat_logger_plugins`` entry points into the process that runs the engine
client (here: the Serve replica), and calls ``record`` once per engine step with the
scheduler's counts and the step's token latencies. The logger writes into a process-wide
sliding window that the replica reads when it reports to the controller.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

WINDOW_S = 10.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


class EngineStatsWindow:
    """The last ``WINDOW_S`` seconds of engine steps.

    Two TPOT signals, because they answer different questions: ``tpot_p*`` are percentiles of the
    per-token inter-token latencies (every step's, so they react within a step but their tail is the
    steps that carry prefill chunks); ``req_tpot_p*`` are percentiles of finished requests' mean time
    per output token, the quantity a per-request TPOT SLO is written on (they lag by a request's
    lifetime).
    """

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.max_num_batched_tokens = 0  # the step budget, set by the stat logger from vLLM's config
        self._steps: deque[tuple[float, int, int, float, int, list[float], list[float], list[float]]] = deque()
        self._latest = (0, 0, 0.0)
        self._totals = (0, 0)  # prompt and output tokens since start
        self._lock = threading.Lock()

    def record(self, running: int, waiting: int, kv: float, prompt_tokens: int, output_tokens: int,
               ttfts: list[float], itls: list[float], req_tpots: list[float] = ()) -> None:
        """One engine step: queue state, prompt and output tokens processed, the step's TTFT / inter-token
        samples and the mean TPOT of each request that finished in it."""
        now = time.monotonic()
        tokens = prompt_tokens + output_tokens
        with self._lock:
            self._latest = (running, waiting, kv)
            self._totals = (self._totals[0] + prompt_tokens, self._totals[1] + output_tokens)
            self._steps.append((now, running, waiting, kv, tokens, list(ttfts), list(itls), list(req_tpots)))
            while self._steps and self._steps[0][0] < now - self.window_s:
                self._steps.popleft()

    def latest(self) -> tuple[int, int, float]:
        """(running, waiting, kv-cache use) from the last step that reported scheduler stats."""
        with self._lock:
            return self._latest

    def snapshot(self) -> dict[str, Any]:
        """Current queue state plus latency percentiles and rates over the window."""
        now = time.monotonic()
        with self._lock:
            steps = [s for s in self._steps if s[0] >= now - self.window_s]
            running, waiting, kv = self._latest
            prompt_total, output_total = self._totals
        ttfts = [t for s in steps for t in s[5]]
        itls = [t for s in steps for t in s[6]]
        req_tpots = [t for s in steps for t in s[7]]
        tokens = sum(s[4] for s in steps)
        busy_steps = [s[4] for s in steps if s[4] > 0]
        span = min(self.window_s, now - steps[0][0]) if steps else 0.0
        return {
            "num_running": running,
            "num_waiting": waiting,
            "kv_cache_usage": min(1.0, max(0.0, kv)),
            "ttft_p50": _percentile(ttfts, 0.5),
            "ttft_p90": _percentile(ttfts, 0.9),
            "tpot_p50": _percentile(itls, 0.5),
            "tpot_p90": _percentile(itls, 0.9),
            "req_tpot_p50": _percentile(req_tpots, 0.5),
            "req_tpot_p90": _percentile(req_tpots, 0.9),
            "tokens_per_s": tokens / span if span > 0 else 0.0,
            "scheduled_tokens_per_step": sum(busy_steps) / len(busy_steps) if busy_steps else 0.0,
            "prompt_tokens_total": prompt_total,
            "output_tokens_total": output_total,
        }


WINDOW = EngineStatsWindow()


def request_tpot(finished: Any) -> float | None:
    """vLLM's own mean time per output token of a finished request; None under two tokens (no gap)."""
    return finished.mean_time_per_output_token if finished.num_generation_tokens >= 2 else None


class StepLog:
    """One JSON line per engine step, for finding stalls after a load test (``NESTEDFP_STEP_LOG``).

    Off unless the variable names a file. Wall-clock times line up with the load report's switch log.
    Replicas of one app may share the file; ``pid`` tells their records apart.
    """

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)  # line-buffered: a killed replica keeps what it wrote
        self._pid = os.getpid()

    def write(self, running: int, waiting: int, prompt_tokens: int, gen_tokens: int, itls: list[float]) -> None:
        self._f.write(json.dumps({
            "t": round(time.time(), 4), "pid": self._pid, "running": running, "waiting": waiting,
            "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "itl_max": round(max(itls), 5) if itls else None,
        }) + "\n")


class PolicySignalsStatLogger(StatLoggerBase):
    """Feeds ``WINDOW`` from every engine step; registered as a vLLM stat-logger plugin."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        WINDOW.max_num_batched_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        path = os.environ.get("NESTEDFP_STEP_LOG")
        self.step_log = StepLog(path) if path else None

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0, **_: Any) -> None:
        if scheduler_stats is None and iteration_stats is None:
            return
        if scheduler_stats is not None:
            running, waiting, kv = (
                scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs, scheduler_stats.kv_cache_usage
            )
        else:
            running, waiting, kv = WINDOW.latest()
        prompt, gen, ttfts, itls, req_tpots = 0, 0, [], [], []
        if iteration_stats is not None:
            prompt, gen = iteration_stats.num_prompt_tokens, iteration_stats.num_generation_tokens
            ttfts = iteration_stats.time_to_first_tokens_iter
            itls = iteration_stats.inter_token_latencies_iter
            req_tpots = [request_tpot(r) for r in getattr(iteration_stats, "finished_requests", ())]
            req_tpots = [t for t in req_tpots if t is not None]
        WINDOW.record(running, waiting, kv, prompt, gen, ttfts, itls, req_tpots)
        if self.step_log is not None:
            self.step_log.write(running, waiting, prompt, gen, itls)

    def log_engine_initialized(self) -> None:
        pass
