"""The replica side: report stats, follow the controller's mode, fall back to fp16 without it.

A replica must never depend on the controller to serve. Every call has a timeout; if the
controller has not answered for ``lease_s`` the replica returns to fp16 (full quality) on its own
and keeps serving; when a controller answers again the replica follows it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional, Protocol

from policies._aio import within
from policies.signals import MODES, Mode, ReplicaStats

log = logging.getLogger(__name__)


class ControllerClient(Protocol):
    async def mode_for(self, replica_id: str) -> str: ...

    async def report(self, stats: dict[str, Any]) -> dict[str, Any]: ...

    async def wait_for_change(
        self, replica_id: str, known_version: Optional[int], timeout_s: float
    ) -> dict[str, Any]: ...


class HandleController:
    """A DeploymentHandle to ``PolicyController`` as plain awaitable methods.

    Cancelling a call (the agent's timeouts do) cancels the Serve request too, so a dead or slow
    controller does not accumulate abandoned long-polls.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        response = getattr(self._handle, method).remote(*args)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise

    async def mode_for(self, replica_id: str) -> str:
        return await self._call("mode_for", replica_id)

    async def report(self, stats: dict[str, Any]) -> dict[str, Any]:
        return await self._call("report", stats)

    async def wait_for_change(
        self, replica_id: str, known_version: Optional[int], timeout_s: float
    ) -> dict[str, Any]:
        return await self._call("wait_for_change", replica_id, known_version, timeout_s)

    async def override(self, mode: str, replica: Optional[str] = None) -> dict[str, Any]:
        return await self._call("override", mode, replica)

    async def set_policy(self, name: str, params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return await self._call("set_policy", name, params)

    async def policy_status(self) -> dict[str, Any]:
        return await self._call("policy_status")

    async def status(self) -> dict[str, Any]:
        return await self._call("status")

    async def metrics_text(self) -> str:
        return await self._call("metrics_text")


class PrecisionAgent:
    """Runs next to one vLLM replica: a report loop and a long-poll loop, both fail-safe.

    ``get_stats`` samples the replica (its ``mode`` is the mode in force); ``apply_mode`` flips the
    engine and is only ever called with a mode different from the current one, one call at a time.
    ``mode`` is the engine's mode at construction.
    """

    def __init__(
        self,
        replica_id: str,
        controller: ControllerClient,
        get_stats: Callable[[], Awaitable[ReplicaStats]],
        apply_mode: Callable[[Mode, str], Awaitable[None]],
        *,
        mode: Mode = "fp16",
        report_interval_s: float = 0.2,
        lease_s: float = 10.0,
        call_timeout_s: float = 1.0,
        poll_timeout_s: float = 10.0,
    ) -> None:
        self.replica_id = replica_id
        self.mode: Mode = mode
        self.since = time.time()
        self.reason = "startup"
        self.switches = 0
        self._controller = controller
        self._get_stats = get_stats
        self._apply_mode = apply_mode
        self._report_interval_s = report_interval_s
        self._lease_s = lease_s
        self._call_timeout_s = call_timeout_s
        self._poll_timeout_s = poll_timeout_s
        self._last_contact = time.monotonic()
        self._connected = True
        self._epoch: Optional[str] = None
        self._version: Optional[int] = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Ask the controller for a mode (fp16 if it does not answer), then start both loops."""
        try:
            mode = await within(self._call_timeout_s, self._controller.mode_for(self.replica_id))
            self._contact()
            await self._set(mode, "assigned at startup")  # type: ignore[arg-type]
        except Exception as e:
            self._lost(e)
            await self._set("fp16", "controller unreachable at startup")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._report_loop()), loop.create_task(self._poll_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _report_loop(self) -> None:
        while True:
            try:
                stats = ReplicaStats.from_dict(await self._get_stats())
            except Exception:
                log.exception("replica %s: get_stats failed", self.replica_id)
            else:
                try:
                    res = await within(self._call_timeout_s, self._controller.report(stats.to_dict()))
                except Exception as e:
                    self._lost(e)
                else:
                    self._contact()
                    await self._follow(res)
            if self.mode != "fp16" and time.monotonic() - self._last_contact > self._lease_s:
                await self._set("fp16", "controller lease expired")
            await asyncio.sleep(self._report_interval_s)

    async def _poll_loop(self) -> None:
        while True:
            try:
                res = await within(
                    self._poll_timeout_s + self._call_timeout_s,
                    self._controller.wait_for_change(self.replica_id, self._version, self._poll_timeout_s),
                )
            except Exception as e:
                self._lost(e)
                await asyncio.sleep(self._report_interval_s)
                continue
            self._contact()
            await self._follow(res)

    async def _follow(self, res: dict[str, Any]) -> None:
        """Apply an assignment unless it is older than one already seen from the same controller.

        Report answers and long-poll answers race; without the version check a late report answer
        could undo a change the long-poll just delivered.
        """
        epoch, version = res.get("epoch"), res.get("version")
        if epoch == self._epoch and version is not None and self._version is not None and version < self._version:
            return
        self._epoch, self._version = epoch, version
        if res.get("mode") in MODES:
            await self._set(res["mode"], res.get("reason", ""))

    async def _set(self, mode: Mode, reason: str) -> None:
        if mode not in MODES:
            raise ValueError(f"controller sent mode {mode!r}")
        async with self._lock:
            if mode == self.mode:
                return
            try:
                await self._apply_mode(mode, reason)
            except Exception:
                log.exception("replica %s: applying %s failed; staying in %s", self.replica_id, mode, self.mode)
                return
            log.info("replica %s: %s -> %s (%s)", self.replica_id, self.mode, mode, reason)
            self.mode, self.reason, self.since = mode, reason, time.time()
            self.switches += 1

    def _contact(self) -> None:
        self._last_contact = time.monotonic()
        if not self._connected:
            log.info("replica %s: controller reachable again", self.replica_id)
            self._connected = True

    def _lost(self, e: BaseException) -> None:
        if self._connected:
            log.warning("replica %s: controller call failed (%r); lease %.1fs", self.replica_id, e, self._lease_s)
            self._connected = False
