"""Locust entry point, spawned by loadtests.runner: one user replays the arrival schedule open-loop.

The dispatcher starts a greenlet per scheduled request (so a slow server cannot lower the offered
load), bounded by a concurrency cap; requests over the cap are dropped and recorded as such. Each
request becomes one JSONL record and Locust request events: "POST <path>" (end to end, with failures),
"TTFT" and "TPOT" (named by the x-nestedfp-mode header), so Locust's CSV/HTML aggregate them too.
Everything stops by itself: after the schedule, in-flight requests get ``drain_timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gevent
import requests
from gevent.pool import Pool
from locust import User, task
from locust.exception import StopUser
from locust.stats import CSV_STATS_INTERVAL_SEC
from requests.adapters import HTTPAdapter

from loadtests.dispatch import LOCUST_CONFIG_ENV, dispatch_open_loop
from loadtests.openai_stream import ENDPOINTS, StreamResult, stream_request
from loadtests.prompts import synth_prompt
from loadtests.shapes import Arrival


class OpenLoopDispatcher(User):
    fixed_count = 1
    _done = False

    def _fire(self, request_type: str, name: str, seconds: float, length: int = 0,
              exception: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=seconds * 1000,
                                             response_length=length, exception=exception, context={})

    @task
    def replay(self) -> None:
        if OpenLoopDispatcher._done:  # replay exactly once, even if quitting takes a moment
            raise StopUser()
        OpenLoopDispatcher._done = True
        cfg = json.loads(Path(os.environ[LOCUST_CONFIG_ENV]).read_text())
        arrivals = [Arrival(t, p, o) for t, p, o in cfg["schedule"]]
        path = ENDPOINTS[cfg["endpoint"]]
        session = requests.Session()
        session.trust_env = False  # straight to --host: no proxies or netrc from the environment
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=cfg["max_concurrency"]))
        session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=cfg["max_concurrency"]))
        pool = Pool(size=cfg["max_concurrency"])
        out = open(cfg["records_path"], "a", buffering=1)

        def write(rec: dict) -> None:
            out.write(json.dumps(rec) + "\n")

        def base(i: int, a: Arrival, lag: float) -> dict:
            return {"idx": i, "t_sched": a.t, "lag": lag, "prompt_tokens_requested": a.prompt_tokens,
                    "output_tokens_requested": a.output_tokens, "dropped": False}

        def one(i: int, a: Arrival, lag: float) -> None:
            t_start = time.time()
            try:
                res = stream_request(session, self.host, cfg["endpoint"], cfg["model"],
                                     synth_prompt(a.prompt_tokens, i), a.output_tokens,
                                     ignore_eos=cfg["ignore_eos"], timeout=cfg["request_timeout"])
            except gevent.GreenletExit:
                res = StreamResult(t_start=t_start, error="cancelled: still running at the drain timeout")
            write(base(i, a, lag) | res.to_dict())
            elapsed = res.e2e if res.e2e is not None else time.time() - res.t_start
            self._fire("POST", path, elapsed, res.output_tokens, None if res.ok else RuntimeError(res.error))
            if res.ok:
                mode = res.mode or "unknown"
                self._fire("TTFT", mode, res.ttft or 0.0)
                if res.tpot is not None:
                    self._fire("TPOT", mode, res.tpot)

        def start(i: int, a: Arrival, lag: float) -> bool:
            if pool.full():
                write(base(i, a, lag) | StreamResult(t_start=time.time(), error="dropped: concurrency cap").to_dict()
                      | {"dropped": True})
                self._fire("DROPPED", "concurrency cap", 0.0, exception=RuntimeError("concurrency cap reached"))
                return False
            pool.spawn(one, i, a, lag)
            return True

        try:
            result = dispatch_open_loop(arrivals, start, now=time.time, sleep=gevent.sleep)
            t_dispatched = time.time()
            pool.join(timeout=cfg["drain_timeout"])
            cancelled = len(pool)
            pool.kill(block=True, timeout=5)
        finally:
            out.close()
        Path(cfg["meta_path"]).write_text(json.dumps({
            "t0": result.t0, "t_dispatched": t_dispatched, "t_end": time.time(), "sent": result.sent,
            "dropped": result.dropped, "cancelled_at_drain": cancelled}))
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)  # Locust's CSV writer takes the final numbers on its next tick
        gevent.spawn(self.environment.runner.quit)
        raise StopUser()
