"""The precision controller: the one place that decides every replica's mode.

Serve handles cannot address one particular replica, so replicas come to the controller: each
replica's agent reports stats every 200 ms and keeps a long-poll open. The controller runs the
policy every tick and, when any assignment changes, bumps one version and wakes every long-poll
at once -- the broadcast (Serve's own config push works the same way).

The controller keeps no durable state. A restarted controller learns replicas from their reports
and adopts the mode each one reports (reason "resumed"), so a restart never flips a replica. It
also starts with the configured policy again: a policy set at run time (``set_policy``) is lost.

``PrecisionController`` is the state machine, plain asyncio and testable without Ray;
``PolicyController`` is the Serve deployment around it. A Serve replica is a named Ray actor that
Serve restarts when it dies; with ``num_replicas=1`` there is exactly one controller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve

from policies._aio import within
from policies.base import Policy
from policies.registry import POLICIES, build_policy, policy_params
from policies.signals import MODES, Decision, Mode, ReplicaStats

log = logging.getLogger(__name__)

OVERRIDES = ("fp16", "fp8", "auto")


@dataclass
class _Replica:
    mode: Mode
    since: float
    reason: str
    last_seen: float
    history: deque[ReplicaStats]
    dwell_from: Optional[float] = None  # None until this controller has switched it: no dwell yet
    switches: int = 0
    stale: bool = False
    reported_mode: Optional[Mode] = None


class _Metrics:
    """Prometheus series in a registry of the controller's own, so tests and restarts start clean."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.mode = Gauge("nestedfp_precision_mode", "Mode assigned to a replica (0 = fp16, 1 = fp8).",
                          ["replica"], registry=r)
        self.switches = Counter("nestedfp_precision_switches", "Mode switches, by replica and target mode.",
                                ["replica", "to"], registry=r)
        self.decision = Histogram("nestedfp_policy_decision_seconds", "Time one policy decision takes.",
                                  buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), registry=r)
        self.waiting = Gauge("nestedfp_controller_num_waiting", "Waiting requests, as last reported.",
                             ["replica"], registry=r)
        self.running = Gauge("nestedfp_controller_num_running", "Running requests, as last reported.",
                             ["replica"], registry=r)

    def drop(self, replica: str, *gauges: Gauge) -> None:
        for g in gauges:
            try:
                g.remove(replica)
            except KeyError:
                pass


class PrecisionController:
    """Assigns each replica a mode from its stats history, the policy and the admin overrides.

    Versions: every change of any assignment bumps ``version``, which starts at the wall clock in
    microseconds so a restarted controller does not reissue a version an agent already holds;
    ``epoch`` names this instance so agents order versions only within one controller's life.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        history_len: int = 240,
        stale_after_s: float = 3.0,
        forget_after_s: float = 600.0,
        switch_log_len: int = 1000,
        policy_log_len: int = 100,
        clock: Callable[[], float] = time.time,
        signal_log: Optional[str] = None,
    ) -> None:
        """``signal_log``: a file to append every reported sample to (JSON lines), so that a run's
        decisions can be recomputed offline for any policy (``python -m loadtests.policy_replay``)."""
        self.policy = policy
        self._signal_log = open(signal_log, "a", buffering=1) if signal_log else None
        self._policy_params = policy_params(policy)
        self._policy_since = clock()
        self._policy_log: deque[dict[str, Any]] = deque(maxlen=policy_log_len)
        self.history_len = history_len
        self.stale_after_s = stale_after_s
        self.forget_after_s = forget_after_s
        self.epoch = uuid.uuid4().hex[:12]
        self._clock = clock
        self._version = time.time_ns() // 1000
        self._changed = asyncio.Event()
        self._replicas: dict[str, _Replica] = {}
        self._override_all: Optional[Mode] = None
        self._override: dict[str, str] = {}  # per replica: "fp16" | "fp8" | "auto" (policy, despite a global override)
        self._log: deque[dict[str, Any]] = deque(maxlen=switch_log_len)
        self._metrics = _Metrics()

    @property
    def version(self) -> int:
        return self._version

    # -- replica side -------------------------------------------------------------------------

    async def mode_for(self, replica_id: str) -> Mode:
        """A starting replica's question: its last assigned mode, else the override, else fp16."""
        now = self._clock()
        r = self._replicas.get(replica_id)
        if r is None:
            ov = self._override_for(replica_id)
            r = self._register(replica_id, ov or "fp16", f"override {ov}" if ov else "startup", now, None)
        r.last_seen = now
        return r.mode

    async def report(self, stats: Mapping[str, Any] | ReplicaStats) -> dict[str, Any]:
        """Record one stats sample; answers with the replica's current assignment."""
        s = ReplicaStats.from_dict(stats)  # type: ignore[arg-type]
        now = self._clock()
        r = self._replicas.get(s.replica_id)
        if r is None:  # this controller restarted (or forgot it): take the replica's word for its mode
            r = self._register(s.replica_id, s.mode, "resumed", now, now)
        if r.stale:
            log.info("replica %s reporting again", s.replica_id)
            r.stale = False
        r.history.append(s)
        if self._signal_log is not None:
            self._signal_log.write(json.dumps(s.to_dict()) + "\n")
        r.last_seen = now
        r.reported_mode = s.mode
        self._metrics.waiting.labels(s.replica_id).set(s.num_waiting)
        self._metrics.running.labels(s.replica_id).set(s.num_running)
        return self._assignment(s.replica_id)

    async def wait_for_change(
        self, replica_id: str, known_version: Optional[int], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Long-poll: returns once ``version`` differs from ``known_version`` or after ``timeout_s``."""
        if known_version == self._version:
            try:
                await within(timeout_s, self._changed.wait())
            except asyncio.TimeoutError:
                pass
        return self._assignment(replica_id)

    # -- admin side ---------------------------------------------------------------------------

    async def override(self, mode: str, replica: Optional[str] = None) -> dict[str, Any]:
        """Pin all replicas (or one) to a mode; "auto" hands back to the policy. Applies at once.

        A global override replaces all per-replica ones. A per-replica "auto" lets the policy drive
        that replica even while a global override pins the rest.
        """
        if mode not in OVERRIDES:
            raise ValueError(f"mode must be one of {OVERRIDES}, got {mode!r}")
        if replica is None:
            self._override.clear()
            self._override_all = None if mode == "auto" else mode  # type: ignore[assignment]
        elif replica not in self._replicas:
            raise ValueError(f"unknown replica {replica!r}; known: {sorted(self._replicas)}")
        elif mode == "auto" and self._override_all is None:
            self._override.pop(replica, None)
        else:
            self._override[replica] = mode
        self.tick()
        return self.status()

    async def set_policy(self, name: str, params: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Swap the adaptive policy at run time; it decides from the next tick, which runs at once.

        A bad name or params raise ValueError and leave the old policy in place. Nothing else needs
        resetting: policies are pure (policies/base.py), the stats history is the replicas' own and
        serves the new policy from its first decision, and the dwell clock keeps counting from the
        last switch, so the new policy cannot flap a replica the old one has just switched.
        Overrides still win: a pinned replica stays pinned until handed back with "auto".
        """
        policy = build_policy(name, params)
        now = self._clock()
        old = {"name": self.policy.name, "params": self._policy_params}
        self.policy, self._policy_params, self._policy_since = policy, policy_params(policy), now
        self._policy_log.append({"time": now, "from": old, "to": {"name": policy.name, "params": self._policy_params}})
        log.info("policy %s %s -> %s %s", old["name"], old["params"], policy.name, self._policy_params)
        self.tick()
        return self.status()

    def policy_status(self) -> dict[str, Any]:
        """The GET /admin/policy body; ``{"name", "params"}`` of it POSTs back to restore this policy."""
        return {
            "name": self.policy.name,
            "params": dict(self._policy_params),
            "since": self._policy_since,
            "available": sorted(POLICIES),
            "changes": list(self._policy_log),
        }

    def status(self) -> dict[str, Any]:
        """The GET /admin/precision body (ARCHITECTURE.md), plus policy, version and staleness."""
        return {
            "policy": self.policy.name,
            "policy_params": dict(self._policy_params),
            "policy_since": self._policy_since,
            "epoch": self.epoch,
            "version": self._version,
            "override": self._override_all,
            "replicas": {
                rid: {
                    "mode": r.mode,
                    "since": r.since,
                    "reason": r.reason,
                    "switches": r.switches,
                    "override": self._override.get(rid, self._override_all),
                    "stale": r.stale,
                    "reported_mode": r.reported_mode,
                    "last_report": r.history[-1].timestamp if r.history else None,
                }
                for rid, r in sorted(self._replicas.items())
            },
            "switches": list(self._log),
        }

    def metrics_text(self) -> str:
        return generate_latest(self._metrics.registry).decode()

    # -- the loop -----------------------------------------------------------------------------

    def tick(self) -> list[dict[str, Any]]:
        """Decide every replica's mode once; broadcast if anything changed. Returns the switches.

        Overrides win and apply even to stale replicas; the policy runs only on fresh stats.
        A policy that raises leaves the replica where it is: a bad policy must not stop the loop.
        """
        now = self._clock()
        switched = []
        for rid, r in list(self._replicas.items()):
            age = now - r.last_seen
            if age > self.forget_after_s:
                del self._replicas[rid]
                self._override.pop(rid, None)
                self._metrics.drop(rid, self._metrics.mode, self._metrics.waiting, self._metrics.running)
                continue
            if age > self.stale_after_s and not r.stale:
                log.warning("replica %s silent for %.1fs: stale, left out of decisions", rid, age)
                r.stale = True
                self._metrics.drop(rid, self._metrics.waiting, self._metrics.running)
            ov = self._override_for(rid)
            if ov is not None:
                d = Decision(ov, f"override {ov}" + ("" if rid in self._override else " (all)"))
            elif r.stale or not r.history:
                continue
            else:
                held = math.inf if r.dwell_from is None else now - r.dwell_from
                t0 = time.perf_counter()
                try:
                    d = self.policy.decide(tuple(r.history), r.mode, held)
                except Exception:
                    log.exception("policy %s failed for replica %s; keeping %s", self.policy.name, rid, r.mode)
                    continue
                finally:
                    self._metrics.decision.observe(time.perf_counter() - t0)
            if d.mode != r.mode:
                switched.append(self._switch(rid, r, d, now))
        if switched:
            self._version += 1
            # Wake every parked long-poll at once; later waiters park on the fresh event.
            event, self._changed = self._changed, asyncio.Event()
            event.set()
        return switched

    async def run(self, tick_s: float = 0.25) -> None:
        """Tick forever (the deployment runs this as a background task)."""
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed")
            await asyncio.sleep(tick_s)

    # -- internals ----------------------------------------------------------------------------

    def _override_for(self, rid: str) -> Optional[Mode]:
        ov = self._override.get(rid, self._override_all)
        return None if ov in (None, "auto") else ov  # type: ignore[return-value]

    def _register(self, rid: str, mode: Mode, reason: str, now: float, dwell_from: Optional[float]) -> _Replica:
        log.info("replica %s registered in %s (%s)", rid, mode, reason)
        r = _Replica(mode=mode, since=now, reason=reason, last_seen=now,
                     history=deque(maxlen=self.history_len), dwell_from=dwell_from)
        self._replicas[rid] = r
        self._metrics.mode.labels(rid).set(MODES.index(mode))
        return r

    def _switch(self, rid: str, r: _Replica, d: Decision, now: float) -> dict[str, Any]:
        entry = {"time": now, "replica": rid, "from": r.mode, "to": d.mode, "reason": d.reason}
        log.info("replica %s: %s -> %s (%s)", rid, r.mode, d.mode, d.reason)
        self._log.append(entry)
        r.mode, r.since, r.reason, r.dwell_from = d.mode, now, d.reason, now
        r.switches += 1
        self._metrics.mode.labels(rid).set(MODES.index(d.mode))
        self._metrics.switches.labels(rid, d.mode).inc()
        return entry

    def _assignment(self, rid: str) -> dict[str, Any]:
        r = self._replicas.get(rid)
        # An unknown replica gets no mode: after a controller restart its long-poll may arrive
        # before its first report, and "fp16" here would flip a replica that is fine in fp8.
        return {
            "mode": r.mode if r else None,
            "reason": r.reason if r else "unknown replica",
            "version": self._version,
            "epoch": self.epoch,
        }


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class PolicyController:
    """Serve deployment owning one PrecisionController and its tick loop.

    Bind with ``PolicyController.bind(policy="queue_depth", policy_params={...})``; replicas and the
    ingress call it through DeploymentHandles. All methods are async so they run on the replica's
    event loop, the same loop as the tick task (the state machine is not thread-safe).
    """

    def __init__(
        self,
        policy: str = "static_fp16",
        policy_params: Optional[Mapping[str, Any]] = None,
        tick_s: float = 0.25,
        stale_after_s: float = 3.0,
        history_len: int = 240,
    ) -> None:
        self._core = PrecisionController(
            build_policy(policy, policy_params), history_len=history_len, stale_after_s=stale_after_s,
            signal_log=os.environ.get("NESTEDFP_SIGNAL_LOG") or None,
        )
        self._tick_s = tick_s
        self._task: Optional[asyncio.Task] = None
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # constructed off the loop: start on the first call instead
                return
            self._task = loop.create_task(self._core.run(self._tick_s))

    async def mode_for(self, replica_id: str) -> str:
        self._ensure_running()
        return await self._core.mode_for(replica_id)

    async def report(self, stats: dict[str, Any]) -> dict[str, Any]:
        self._ensure_running()
        return await self._core.report(stats)

    async def wait_for_change(
        self, replica_id: str, known_version: Optional[int], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        self._ensure_running()
        return await self._core.wait_for_change(replica_id, known_version, timeout_s)

    async def override(self, mode: str, replica: Optional[str] = None) -> dict[str, Any]:
        return await self._core.override(mode, replica)

    async def set_policy(self, name: str, params: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        return await self._core.set_policy(name, params)

    async def policy_status(self) -> dict[str, Any]:
        return self._core.policy_status()

    async def status(self) -> dict[str, Any]:
        return self._core.status()

    async def metrics_text(self) -> str:
        return self._core.metrics_text()

    async def check_health(self) -> None:
        """Serve restarts the controller if its tick loop died."""
        if self._task is not None and self._task.done():
            raise RuntimeError(f"tick loop stopped: {self._task!r}")
