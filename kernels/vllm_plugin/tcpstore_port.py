"""A torch.distributed TCPStore port of its own for each vLLM engine on a shared node.

Why: vLLM 0.25's Ray executor (``RayExecutorV2``, the default) picks an engine's TCPStore port by
scanning upward from ``data_parallel_master_port + 100``. Without data parallelism that base comes
from ``VLLM_DP_MASTER_PORT``, default 0, so every engine on a node starts at port 100. Two Serve
replicas starting together both find 100 free and both listen on it; one dies with
``EADDRINUSE`` and Serve restarts it (our two-replica app on a 2-GPU H200 box, 2026-11-22; the
restart picked 101 and cost a minute of start-up). A random base per engine-config process keeps
co-located engines apart: two collide only when they draw the same base (or their scans meet over
ports already taken). An operator's own ``VLLM_DP_MASTER_PORT`` is kept, and with data parallelism
vLLM chooses the master port itself, so this changes nothing there.
"""

from __future__ import annotations

import os
import random
from collections.abc import MutableMapping

VARIABLE = "VLLM_DP_MASTER_PORT"
# vLLM scans upward from base + 100 for a rank-0 engine; keep that below Linux's ephemeral range.
# (A first cut drew from 313 bases 32 apart; two replicas drew the same one on the H200.)
BASES = range(10000, 30000)


def spread_tcpstore_port(environ: MutableMapping[str, str] = os.environ,
                         rng: random.Random | None = None) -> str | None:
    """Set ``VLLM_DP_MASTER_PORT`` to a random base where unset; returns it, or None if already set.

    Must run before vLLM builds its ``ParallelConfig`` (the plugin entry point does: vLLM loads
    plugins in ``EngineArgs.__post_init__``); processes the engine spawns inherit the value.
    """
    if environ.get(VARIABLE):
        return None
    environ[VARIABLE] = str((rng or random.SystemRandom()).choice(BASES))
    return environ[VARIABLE]
