"""PrecisionController and PrecisionAgent together in one event loop, with fake replicas.

Intervals are shortened (ticks of 50 ms, reports of 20 ms); time bounds are generous and only
check that things happen, and in which order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import pytest

from policies.agent import HandleController, PrecisionAgent
from policies.controller import PrecisionController
from policies.queue_depth import QueueDepthPolicy
from policies.registry import build_policy
from policies.signals import ReplicaStats


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def until(pred, timeout_s: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def policy(**kw) -> QueueDepthPolicy:
    return QueueDepthPolicy(**{"high": 8, "low": 2, "min_dwell_s": 0.2, "window": 2, **kw})


class FakeReplica:
    """Stands in for a vLLM replica: a settable queue and a mode that apply_mode flips."""

    def __init__(self, rid: str, mode: str = "fp16") -> None:
        self.rid, self.mode, self.waiting = rid, mode, 0
        self.applied: list[tuple[float, str, str]] = []

    async def get_stats(self) -> ReplicaStats:
        return ReplicaStats(replica_id=self.rid, mode=self.mode, num_waiting=self.waiting, num_running=4,
                            max_num_batched_tokens=8192, timestamp=time.time())

    async def apply_mode(self, mode: str, reason: str) -> None:
        self.mode = mode
        self.applied.append((time.monotonic(), mode, reason))


class Proxy:
    """The agents' view of the controller: can be pointed at a new instance, or go silent (hang)."""

    def __init__(self, target: PrecisionController) -> None:
        self.target: Optional[PrecisionController] = target

    async def _call(self, name: str, *args: Any) -> Any:
        if self.target is None:
            await asyncio.Event().wait()  # a dead actor: calls never return
        return await getattr(self.target, name)(*args)

    async def mode_for(self, *a):
        return await self._call("mode_for", *a)

    async def report(self, *a):
        return await self._call("report", *a)

    async def wait_for_change(self, *a):
        return await self._call("wait_for_change", *a)


def agent(replica: FakeReplica, controller, **kw) -> PrecisionAgent:
    kw = {"report_interval_s": 0.02, "lease_s": 5.0, "call_timeout_s": 0.2, "poll_timeout_s": 1.0, **kw}
    return PrecisionAgent(replica.rid, controller, replica.get_stats, replica.apply_mode, mode=replica.mode, **kw)


class Cluster:
    """A controller ticking every 50 ms and one agent per fake replica."""

    def __init__(self, n: int, ctrl: Optional[PrecisionController] = None, **agent_kw) -> None:
        self.ctrl = ctrl or PrecisionController(policy())
        self.proxy = Proxy(self.ctrl)
        self.replicas = [FakeReplica(f"r{i}") for i in range(n)]
        self.agents = [agent(r, self.proxy, **agent_kw) for r in self.replicas]
        self.ticker: Optional[asyncio.Task] = None

    async def __aenter__(self) -> "Cluster":
        self.ticker = asyncio.create_task(self.ctrl.run(0.05))
        await asyncio.gather(*(a.start() for a in self.agents))
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents))
        self.ticker.cancel()

    def swap_controller(self, ctrl: PrecisionController) -> None:
        self.ticker.cancel()
        self.ctrl = self.proxy.target = ctrl
        self.ticker = asyncio.create_task(ctrl.run(0.05))


def test_queue_buildup_switches_one_replica_to_fp8_and_drain_switches_it_back():
    async def main():
        async with Cluster(2) as c:
            r0, r1 = c.replicas
            r0.waiting = 20
            await until(lambda: r0.mode == "fp8", what="r0 in fp8")
            r0.waiting = 0
            await until(lambda: r0.mode == "fp16", what="r0 back in fp16")
            assert [m for _, m, _ in r0.applied] == ["fp8", "fp16"]
            assert r1.applied == [] and r1.mode == "fp16"
            log = c.ctrl.status()["switches"]
            assert [(e["replica"], e["from"], e["to"]) for e in log] == [("r0", "fp16", "fp8"), ("r0", "fp8", "fp16")]
            assert "waiting" in log[0]["reason"] and log[0]["time"] <= log[1]["time"]
            assert c.agents[0].switches == 2 and c.agents[0].reason == log[1]["reason"]

    run(main())


def test_one_tick_wakes_every_parked_long_poll_at_once():
    async def main():
        ctrl = PrecisionController(policy())
        for i in range(5):
            await ctrl.report((await FakeReplica(f"r{i}").get_stats()).to_dict())
        v0 = ctrl.version
        polls = [asyncio.create_task(ctrl.wait_for_change(f"r{i}", v0, 10.0)) for i in range(5)]
        await asyncio.sleep(0.05)
        assert not any(p.done() for p in polls)  # parked, not spinning
        await ctrl.override("fp8")  # one tick, five changes
        done, _ = await asyncio.wait(polls, timeout=0.5)
        assert len(done) == 5
        assert {(p.result()["mode"], p.result()["version"]) for p in polls} == {("fp8", v0 + 1)}

    run(main())


def test_a_change_reaches_all_agents_through_the_long_poll():
    async def main():
        # Reports every 60 s: only the long-poll can deliver the change in time.
        async with Cluster(4, report_interval_s=60.0, lease_s=120.0) as c:
            await asyncio.sleep(0.1)  # let every agent park its long-poll
            t0 = time.monotonic()
            await c.ctrl.override("fp8")
            await until(lambda: all(r.mode == "fp8" for r in c.replicas), timeout_s=2.0, what="all in fp8")
            assert all(r.applied[0][0] >= t0 for r in c.replicas)

    run(main())


def test_override_all_one_and_auto():
    async def main():
        async with Cluster(3) as c:
            r0, r1, r2 = c.replicas
            await c.proxy.target.override("fp8")
            await until(lambda: all(r.mode == "fp8" for r in c.replicas), what="override fp8 for all")
            assert c.ctrl.status()["replicas"]["r0"]["reason"] == "override fp8 (all)"

            await c.ctrl.override("fp16", replica="r1")
            await until(lambda: r1.mode == "fp16", what="r1 pinned to fp16")
            await c.ctrl.override("auto", replica="r2")  # r2 back to the policy: idle -> fp16
            await until(lambda: r2.mode == "fp16", what="r2 handed back to the policy")
            await asyncio.sleep(0.2)
            assert r0.mode == "fp8"
            st = c.ctrl.status()["replicas"]
            assert {k: v["override"] for k, v in st.items()} == {"r0": "fp8", "r1": "fp16", "r2": "auto"}

            await c.ctrl.override("auto")  # everything to the policy, per-replica pins too
            await until(lambda: all(r.mode == "fp16" for r in c.replicas), what="all back to the policy")
            await c.ctrl.override("fp8", replica="r2")
            await until(lambda: r2.mode == "fp8", what="r2 pinned to fp8")
            await asyncio.sleep(0.2)
            assert (r0.mode, r1.mode) == ("fp16", "fp16")
            assert c.ctrl.status()["override"] is None

            with pytest.raises(ValueError, match="mode must be one of"):
                await c.ctrl.override("int4")
            with pytest.raises(ValueError, match="unknown replica 'r9'"):
                await c.ctrl.override("fp8", replica="r9")

    run(main())


def test_new_replica_starts_in_the_overridden_mode():
    async def main():
        ctrl = PrecisionController(policy())
        await ctrl.override("fp8")
        r = FakeReplica("late")
        a = agent(r, ctrl)
        await a.start()
        assert r.mode == "fp8" and r.applied[0][2] == "assigned at startup"  # before any report
        await a.stop()

    run(main())


def test_status_and_metrics_show_modes_switches_and_queues():
    async def main():
        async with Cluster(2) as c:
            c.replicas[0].waiting = 20
            await until(lambda: c.replicas[0].mode == "fp8", what="r0 in fp8")
            await asyncio.sleep(0.1)
            st = c.ctrl.status()
            assert set(st) >= {"replicas", "switches"}
            assert set(st["replicas"]["r0"]) >= {"mode", "since", "reason", "switches", "override"}
            r0 = st["replicas"]["r0"]
            assert (r0["mode"], r0["switches"], r0["override"], r0["reported_mode"]) == ("fp8", 1, None, "fp8")
            assert abs(r0["since"] - time.time()) < 5
            assert set(st["switches"][0]) == {"time", "replica", "from", "to", "reason"}

            text = c.ctrl.metrics_text()
            assert 'nestedfp_precision_mode{replica="r0"} 1.0' in text
            assert 'nestedfp_precision_mode{replica="r1"} 0.0' in text
            assert 'nestedfp_precision_switches_total{replica="r0",to="fp8"} 1.0' in text
            assert 'nestedfp_controller_num_waiting{replica="r0"} 20.0' in text
            assert 'nestedfp_controller_num_running{replica="r1"} 4.0' in text
            count = next(l for l in text.splitlines() if l.startswith("nestedfp_policy_decision_seconds_count"))
            assert float(count.split()[-1]) > 0

    run(main())


def test_silent_replica_goes_stale_and_is_left_out_until_it_reports():
    async def main():
        now = [1000.0]
        ctrl = PrecisionController(policy(min_dwell_s=0, window=1), stale_after_s=3.0, clock=lambda: now[0])
        busy = ReplicaStats(replica_id="r0", mode="fp16", num_waiting=20, timestamp=1000.0)
        await ctrl.report(busy)
        now[0] += 10
        assert ctrl.tick() == []  # a queue seen 10 s ago is no reason to switch
        assert ctrl.status()["replicas"]["r0"]["stale"] is True
        assert "nestedfp_controller_num_waiting{" not in ctrl.metrics_text()
        await ctrl.report(busy.model_copy(update={"timestamp": 1010.0}))
        assert [e["to"] for e in ctrl.tick()] == ["fp8"]
        assert ctrl.status()["replicas"]["r0"]["stale"] is False
        now[0] += 1000
        ctrl.tick()
        assert ctrl.status()["replicas"] == {}  # forgotten after forget_after_s

    run(main())


def test_a_failing_policy_keeps_the_mode_and_the_loop():
    class Broken(QueueDepthPolicy):
        def decide(self, history, current, seconds_in_mode):
            raise RuntimeError("bug")

    async def main():
        ctrl = PrecisionController(Broken())
        await ctrl.report(ReplicaStats(replica_id="r0", mode="fp8", num_waiting=0, timestamp=1.0))
        assert ctrl.tick() == []
        assert ctrl.status()["replicas"]["r0"]["mode"] == "fp8"

    run(main())


def test_set_policy_swaps_every_replica_at_once_and_records_why():
    async def main():
        ctrl = PrecisionController(build_policy("static_fp16"))
        for rid in ("r0", "r1"):
            await ctrl.report(ReplicaStats(replica_id=rid, mode="fp16", timestamp=time.time()))
        assert ctrl.tick() == []
        v0 = ctrl.version
        poll = asyncio.create_task(ctrl.wait_for_change("r1", v0, 10.0))
        await asyncio.sleep(0.01)
        st = await ctrl.set_policy("static_fp8", None)
        assert {rid: (r["mode"], r["reason"]) for rid, r in st["replicas"].items()} == {
            "r0": ("fp8", "static fp8"), "r1": ("fp8", "static fp8")}
        assert [(e["replica"], e["from"], e["to"], e["reason"]) for e in st["switches"]] == [
            ("r0", "fp16", "fp8", "static fp8"), ("r1", "fp16", "fp8", "static fp8")]
        assert (st["policy"], st["policy_params"], st["version"]) == ("static_fp8", {}, v0 + 1)
        assert (await asyncio.wait_for(poll, 0.5))["mode"] == "fp8"  # parked long-polls hear it at once
        ps = ctrl.policy_status()
        assert (ps["name"], ps["params"], ps["since"]) == ("static_fp8", {}, ps["changes"][0]["time"])
        assert [(c["from"]["name"], c["to"]["name"]) for c in ps["changes"]] == [("static_fp16", "static_fp8")]
        assert "slo" in ps["available"] and "queue_depth" in ps["available"]

    run(main())


def test_status_reports_every_param_of_the_policy_so_it_can_be_set_back():
    async def main():
        ctrl = PrecisionController(build_policy("queue_depth", {"high": 4}))
        st = ctrl.status()
        assert st["policy"] == "queue_depth"
        assert st["policy_params"] == {"high": 4.0, "low": 2.0, "min_dwell_s": 5.0, "window": 4,
                                       "include_running": False}
        await ctrl.set_policy("slo", {"tpot_s": 0.05})
        ps = ctrl.policy_status()
        assert (ps["name"], ps["params"]["tpot_s"], ps["params"]["ttft_s"]) == ("slo", 0.05, None)
        await ctrl.set_policy(st["policy"], st["policy_params"])  # GET's answer POSTs back verbatim
        assert ctrl.policy == QueueDepthPolicy(high=4)

    run(main())


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("fifo", None, "unknown policy 'fifo'"),
        ("queue_depth", {"hi": 4}, "unknown params"),
        ("queue_depth", {"high": "lots"}, "param 'high'"),
        ("queue_depth", {"window": 2.5}, "param 'window'"),  # would pass construction and fail every decide
        ("queue_depth", {"high": 1, "low": 2}, "low < high"),
        ("slo", {}, "at least one"),
        ("queue_depth", [("high", 4)], "mapping"),
    ],
)
def test_set_policy_rejects_bad_names_and_params_and_keeps_the_old_policy(name, params, match):
    async def main():
        ctrl = PrecisionController(build_policy("static_fp8"))
        await ctrl.report(ReplicaStats(replica_id="r0", mode="fp16", timestamp=time.time()))
        ctrl.tick()
        before = ctrl.status()
        with pytest.raises(ValueError, match=match):
            await ctrl.set_policy(name, params)
        assert ctrl.status() == before and ctrl.policy_status()["changes"] == []
        await ctrl.report(ReplicaStats(replica_id="r0", mode="fp8", num_waiting=50, timestamp=time.time()))
        ctrl.tick()
        assert ctrl.status()["replicas"]["r0"]["reason"] == "static fp8"  # the old policy still decides

    run(main())


def test_a_new_policy_respects_the_dwell_of_a_switch_the_old_one_made():
    async def main():
        now = [1000.0]
        ctrl = PrecisionController(build_policy("static_fp8"), clock=lambda: now[0])
        idle = ReplicaStats(replica_id="r0", mode="fp16", timestamp=1000.0)
        await ctrl.report(idle)
        assert [e["to"] for e in ctrl.tick()] == ["fp8"]
        now[0] += 1
        st = await ctrl.set_policy("queue_depth", {"min_dwell_s": 5, "window": 1})
        assert st["replicas"]["r0"]["mode"] == "fp8"  # idle wants fp16, but fp8 has held only 1 s of 5
        now[0] += 5
        await ctrl.report(idle.model_copy(update={"mode": "fp8", "timestamp": now[0]}))
        assert [(e["to"], e["reason"]) for e in ctrl.tick()] == [("fp16", "waiting 0 <= 2")]

    run(main())


def test_swapping_policies_mid_run_keeps_the_loop_and_the_agents_going():
    async def main():
        async with Cluster(3) as c:
            c.replicas[0].waiting = 20
            specs = [("slo", {"ttft_s": 0.5}), ("token_budget", {"min_dwell_s": 0}), ("static_fp8", None),
                     ("queue_depth", {"min_dwell_s": 0, "window": 1}), ("static_fp16", None)]
            for i in range(15):
                await c.ctrl.set_policy(*specs[i % len(specs)])
                await asyncio.sleep(0.03)
            assert not c.ticker.done()
            await c.ctrl.set_policy("static_fp8")
            await until(lambda: all(r.mode == "fp8" for r in c.replicas), what="every agent in fp8")
            await c.ctrl.set_policy("queue_depth", {"high": 8, "low": 2, "min_dwell_s": 0, "window": 1})
            await until(lambda: [r.mode for r in c.replicas] == ["fp8", "fp16", "fp16"],
                        what="the idle replicas back in fp16 under queue_depth, the busy one kept in fp8")
            assert not c.ticker.done()

    run(main())


def test_agent_falls_back_to_fp16_when_the_controller_stops_answering():
    async def main():
        async with Cluster(2, lease_s=0.5, call_timeout_s=0.1) as c:
            await c.ctrl.override("fp8")
            await until(lambda: all(r.mode == "fp8" for r in c.replicas), what="fp8")
            t_dead = time.monotonic()
            c.proxy.target = None  # calls now hang forever
            await until(lambda: all(r.mode == "fp16" for r in c.replicas), timeout_s=3.0, what="lease fallback")
            for r, a in zip(c.replicas, c.agents):
                t, mode, reason = r.applied[-1]
                assert (mode, reason) == ("fp16", "controller lease expired") == (a.mode, a.reason)
                assert t - t_dead >= 0.5 * 0.9  # not before the lease ran out

    run(main())


def test_agent_starts_in_fp16_when_the_controller_is_unreachable():
    async def main():
        r = FakeReplica("r0", mode="fp8")
        proxy = Proxy(PrecisionController(policy()))
        proxy.target = None
        a = agent(r, proxy, call_timeout_s=0.1)
        await asyncio.wait_for(a.start(), 2.0)
        assert (r.mode, a.reason) == ("fp16", "controller unreachable at startup")
        await a.stop()

    run(main())


def test_restarted_controller_resumes_from_reports_without_flipping_replicas():
    async def main():
        async with Cluster(2) as c:
            r0, r1 = c.replicas
            r0.waiting = 20
            await until(lambda: r0.mode == "fp8", what="r0 in fp8")
            c.swap_controller(PrecisionController(policy()))  # fresh, no memory
            await until(lambda: len(c.ctrl.status()["replicas"]) == 2, what="both replicas known again")
            await asyncio.sleep(0.3)
            st = c.ctrl.status()
            assert {k: (v["mode"], v["reason"]) for k, v in st["replicas"].items()} == {
                "r0": ("fp8", "resumed"), "r1": ("fp16", "resumed")}
            assert st["switches"] == [] and len(r0.applied) == 1
            r0.waiting = 0  # the new controller drives it from here
            await until(lambda: r0.mode == "fp16", what="r0 back in fp16 under the new controller")
            assert c.ctrl.status()["switches"][0]["from"] == "fp8"

    run(main())


def test_a_late_answer_does_not_undo_a_newer_one():
    async def main():
        r = FakeReplica("r0")
        a = agent(r, Proxy(PrecisionController(policy())))
        await a._follow({"mode": "fp8", "reason": "poll", "version": 7, "epoch": "A"})
        await a._follow({"mode": "fp16", "reason": "late report", "version": 6, "epoch": "A"})
        assert r.mode == "fp8"
        await a._follow({"mode": "fp16", "reason": "new controller", "version": 1, "epoch": "B"})
        assert r.mode == "fp16"

    run(main())


@pytest.mark.timeout(120)
def test_policy_controller_deployment_round_trip_on_ray_serve():
    ray = pytest.importorskip("ray")
    from ray import serve

    from policies.controller import PolicyController

    own_ray = not ray.is_initialized()  # leave a session-wide Ray (if a fixture started one) running
    if own_ray:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        app = PolicyController.bind(
            policy="queue_depth", policy_params={"high": 8, "low": 2, "min_dwell_s": 0, "window": 1}, tick_s=0.05
        )
        handle = serve.run(app, name="policy_test", route_prefix=None)
        client = HandleController(handle)

        async def main():
            r0, r1 = FakeReplica("r0"), FakeReplica("r1")
            a0 = agent(r0, client, call_timeout_s=2.0)
            await a0.start()
            assert await client.mode_for("r1") == "fp16"
            r0.waiting = 20
            await until(lambda: r0.mode == "fp8", timeout_s=10.0, what="r0 in fp8 through Serve")
            st = await client.status()
            assert st["replicas"]["r0"]["mode"] == "fp8" and st["switches"][0]["replica"] == "r0"
            ans = await client.report((await r1.get_stats()).to_dict())
            assert ans["mode"] == "fp16"
            change = asyncio.create_task(client.wait_for_change("r1", ans["version"], 10.0))
            await client.override("fp8", "r1")
            assert (await asyncio.wait_for(change, 5.0))["mode"] == "fp8"
            assert 'nestedfp_precision_mode{replica="r1"} 1.0' in await client.metrics_text()
            await client.override("auto")
            st = await client.set_policy("static_fp16", None)  # r0's queue is still long
            assert st["policy"] == "static_fp16"
            await until(lambda: r0.mode == "fp16", timeout_s=10.0, what="r0 in fp16 under the new policy")
            assert (await client.policy_status())["name"] == "static_fp16"
            with pytest.raises(ValueError, match="unknown policy"):
                await client.set_policy("fifo", None)
            await a0.stop()

        run(main())
    finally:
        serve.delete("policy_test")
        if own_ray:
            serve.shutdown()
            ray.shutdown()
