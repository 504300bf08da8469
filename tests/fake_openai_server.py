"""A small fake of the NestedFP app for load-test development: OpenAI streaming API + /admin/precision
and /admin/policy.

Replicas are simulated in one process. Each streams tokens with a per-token delay that grows with its
number of in-flight requests and halves in fp8, and a queue-depth policy ("inflight") flips it to fp8
when in-flight requests exceed ``--high`` and back to fp16 once they stay at or below ``--low`` for
``--hold`` seconds. POST /admin/precision overrides it and POST /admin/policy swaps it as in
docs/ARCHITECTURE.md; GET /admin/policy lists every swap under "changes" for tests to check.

Run: ``python tests/fake_openai_server.py --port 0`` prints ``LISTENING <port>`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from aiohttp import web

MODEL = "fake-tiny"
# Policies the fake knows, with the params each accepts. "slo" decides like "inflight" (the fake has
# no latency signal) but, like the app's, needs a target.
FAKE_POLICIES = {"inflight": {"high", "low", "hold"}, "static_fp16": set(), "static_fp8": set(),
                 "slo": {"ttft_s", "tpot_s"}}


@dataclass
class Replica:
    rid: str
    mode: str = "fp16"
    since: float = field(default_factory=time.time)
    reason: str = "start"
    override: str | None = None
    inflight: int = 0
    calm_since: float | None = None
    switches: list[dict] = field(default_factory=list)


class FakeApp:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.replicas = [Replica(f"replica-{i}") for i in range(args.replicas)]
        self.switches: list[dict] = []
        self.next = 0
        self.policy = {"name": "inflight", "params": {"high": args.high, "low": args.low, "hold": args.hold}}
        self.policy_changes: list[dict] = []

    def set_mode(self, r: Replica, mode: str, reason: str) -> None:
        if r.mode == mode:
            return
        ev = {"time": time.time(), "replica": r.rid, "from": r.mode, "to": mode, "reason": reason}
        r.switches.append(ev)
        self.switches.append(ev)
        r.mode, r.since, r.reason = mode, ev["time"], reason

    async def policy_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            name = self.policy["name"]
            p = self.policy["params"] if name == "inflight" else {}
            high, low, hold = p.get("high", self.args.high), p.get("low", self.args.low), p.get("hold", self.args.hold)
            for r in self.replicas:
                if r.override:
                    self.set_mode(r, r.override, "override")
                    continue
                if name.startswith("static_"):
                    self.set_mode(r, name[len("static_"):], f"static {name[len('static_'):]}")
                elif r.inflight > high:
                    r.calm_since = None
                    self.set_mode(r, "fp8", f"in-flight {r.inflight} > {high}")
                elif r.inflight <= low:
                    r.calm_since = r.calm_since or now
                    if r.mode == "fp8" and now - r.calm_since >= hold:
                        self.set_mode(r, "fp16", f"in-flight <= {low} for {hold:g}s")
                else:
                    r.calm_since = None

    def token_delay(self, r: Replica) -> float:
        base = self.args.tpot_fp16 if r.mode == "fp16" else self.args.tpot_fp16 / 2
        return base * (1 + self.args.load_factor * r.inflight)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        if body.get("model") != MODEL:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}},
                                     status=404)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n_prompt = len(prompt.split())
        n_out = int(body.get("max_tokens") or 16)
        r = self.replicas[self.next % len(self.replicas)]
        self.next += 1
        resp = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "x-nestedfp-replica": r.rid, "x-nestedfp-mode": r.mode})
        await resp.prepare(request)
        r.inflight += 1
        try:
            await asyncio.sleep(self.args.ttft_base + n_prompt * self.args.prefill_per_token)
            for i in range(n_out):
                if i:
                    await asyncio.sleep(self.token_delay(r))
                last = i == n_out - 1
                choice = ({"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": "length" if last else None}
                          if chat else {"index": 0, "text": f" t{i}", "finish_reason": "length" if last else None})
                await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        finally:
            r.inflight -= 1
        await resp.write_eof()
        return resp

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.args.admin_token}"

    async def get_precision(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        reps = {r.rid: {"mode": r.mode, "since": r.since, "reason": r.reason, "switches": len(r.switches),
                        "override": r.override} for r in self.replicas}  # a count, as the app sends
        return web.json_response({"policy": self.policy["name"], "policy_params": self.policy["params"],
                                  "replicas": reps, "switches": self.switches})

    async def post_precision(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        mode, rid = body.get("mode"), body.get("replica")
        if mode not in ("fp16", "fp8", "auto"):
            return web.json_response({"error": f"bad mode {mode!r}"}, status=400)
        for r in self.replicas:
            if rid is None or r.rid == rid:
                r.override = None if mode == "auto" else mode
                if r.override:
                    self.set_mode(r, r.override, "override")
        return await self.get_precision(request)

    async def get_policy(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({**self.policy, "available": sorted(FAKE_POLICIES), "changes": self.policy_changes})

    async def post_policy(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        name, params = body.get("name"), body.get("params") or {}
        if name not in FAKE_POLICIES or set(params) - FAKE_POLICIES[name]:
            return web.json_response({"error": f"bad policy {name!r} or params {params!r}"}, status=400)
        if name == "slo" and not params:
            return web.json_response({"error": "slo needs at least one of ttft_s, tpot_s"}, status=400)
        self.policy = {"name": name, "params": params}
        self.policy_changes.append({"time": time.time(), **self.policy})
        return await self.get_precision(request)


def make_app(args: argparse.Namespace) -> web.Application:
    fake = FakeApp(args)
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/completions", fake.generate)
    app.router.add_post("/v1/chat/completions", fake.generate)
    app.router.add_get("/admin/precision", fake.get_precision)
    app.router.add_post("/admin/precision", fake.post_precision)
    app.router.add_get("/admin/policy", fake.get_policy)
    app.router.add_post("/admin/policy", fake.post_policy)

    async def policy(app: web.Application):
        task = asyncio.create_task(fake.policy_loop())
        yield
        task.cancel()

    app.cleanup_ctx.append(policy)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--admin-token", default="test-token")
    p.add_argument("--tpot-fp16", type=float, default=0.02, help="seconds per token, idle fp16 replica")
    p.add_argument("--load-factor", type=float, default=0.1, help="token delay grows by this per in-flight request")
    p.add_argument("--ttft-base", type=float, default=0.02)
    p.add_argument("--prefill-per-token", type=float, default=0.0002)
    p.add_argument("--high", type=int, default=3, help="fp8 when in-flight exceeds this")
    p.add_argument("--low", type=int, default=1, help="fp16 when in-flight stays at or below this ...")
    p.add_argument("--hold", type=float, default=1.0, help="... for this many seconds")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 -- the only way to learn port 0's pick
    print(f"LISTENING {port}", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def running_fake_server(*extra_args: str) -> Iterator[str]:
    """Start the fake in a subprocess on 127.0.0.1 with a free port; yield its base URL."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), "--port", "0", *extra_args],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(_serve(parse_args()))
