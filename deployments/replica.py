"""One LLM replica: Ray Serve LLM's ``LLMServer`` plus a precision agent and policy signals.

Everything OpenAI-shaped (request parsing, vLLM's OpenAI serving layer, streaming) is
``LLMServer``'s. This class adds what precision control needs: the replica's identity and mode
on each response, stats for the controller, and mode switches through the worker extension.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncGenerator

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.deployment import LLMServer

from deployments.engine_stats import WINDOW
from policies.agent import HandleController, PrecisionAgent
from policies.signals import Mode, ReplicaStats

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ServedBy:
    """First item of every response stream: who serves it and in which mode it started."""

    replica_id: str
    mode: str


class NestedFPServer(LLMServer):
    async def __init__(
        self,
        llm_config,
        *,
        controller: DeploymentHandle,
        report_interval_s: float = 0.2,
        lease_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        await super().__init__(llm_config, **kwargs)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.agent = PrecisionAgent(
            self.replica_id,
            HandleController(controller),
            self.get_stats,
            self._apply_mode,
            mode=await self._engine_mode(),
            report_interval_s=report_interval_s,
            lease_s=lease_s,
        )
        await self.agent.start()

    async def _engine_mode(self) -> Mode:
        modes = set(await self.collective_rpc("get_precision"))
        if len(modes) != 1:
            raise RuntimeError(f"workers disagree on precision: {modes}")
        return modes.pop()

    async def _apply_mode(self, mode: Mode, reason: str) -> None:
        t0 = time.perf_counter()
        await self.collective_rpc("set_precision", args=(mode,))
        logger.info("precision -> %s in %.1f ms (%s)", mode, 1e3 * (time.perf_counter() - t0), reason)

    async def get_stats(self) -> ReplicaStats:
        snap = WINDOW.snapshot()
        return ReplicaStats(
            replica_id=self.replica_id,
            mode=self.agent.mode if hasattr(self, "agent") else await self._engine_mode(),
            max_num_batched_tokens=WINDOW.max_num_batched_tokens,
            timestamp=time.time(),
            **snap,
        )

    async def precision_status(self) -> dict[str, Any]:
        a = self.agent
        return {"replica": self.replica_id, "mode": a.mode, "since": a.since, "reason": a.reason, "switches": a.switches}

    async def _with_served_by(self, stream) -> AsyncGenerator[Any, None]:
        yield ServedBy(self.replica_id, self.agent.mode)
        async for item in stream:
            yield item

    async def chat(self, request, raw_request_info=None):
        return self._with_served_by(await super().chat(request, raw_request_info))

    async def completions(self, request, raw_request_info=None):
        return self._with_served_by(await super().completions(request, raw_request_info))

    async def __del__(self) -> None:
        if hasattr(self, "agent"):
            await self.agent.stop()
        parent_del = getattr(super(), "__del__", None)  # Ray >= 2.60 shuts the engine down here
        if parent_del is not None:
            await parent_del()
