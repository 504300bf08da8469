"""A policy replayed offline on the stats the replicas reported during a run (``NESTEDFP_SIGNAL_LOG``).

Why: a policy is a pure function of a replica's stats history (``policies/base.py``), so the
controller's decisions can be recomputed from the recorded samples, for the policy that ran or for
any other, without a GPU: the controller itself is fed the samples on a replayed clock. It is open loop: the samples are what each replica saw in the modes it was
really in. Replayed on a static-fp16 run, it shows where a policy would first leave fp16: at base load
(a false alarm) or how soon into a burst. What would have followed a switch it cannot show.

    python -m loadtests.policy_replay --signals signals.jsonl REPORT.json [--policy slo] [--params JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from loadtests.jsonl import read_jsonl
from loadtests.offline import per_report
from policies import Policy, ReplicaStats, build_policy
from policies.controller import PrecisionController

TICK_S = 0.25  # the controller's tick (policies.controller.PolicyController)


def replay(samples: Sequence[Mapping[str, Any]], policy: Policy, start: float, end: float,
           tick_s: float = TICK_S) -> dict[str, list[dict[str, Any]]]:
    """Per replica: the switches ``policy`` makes from ``start`` to ``end``, made by the controller itself
    (``PrecisionController`` on a replayed clock): each sample reported at its time, a tick every ``tick_s``.
    Each replica registers as at app start (fp16, no dwell to wait out); a signal log begins there too."""
    clock = {"now": start}
    controller = PrecisionController(policy, clock=lambda: clock["now"])
    stats = sorted((ReplicaStats.from_dict(dict(d)) for d in samples), key=lambda s: s.timestamp)
    replicas = list(dict.fromkeys(s.replica_id for s in stats))

    async def run() -> None:
        for rid in replicas:
            await controller.mode_for(rid)
        i = 0
        for k in range(int((end - start) / tick_s) + 1):
            now = start + k * tick_s
            while i < len(stats) and stats[i].timestamp <= now:
                clock["now"] = max(start, stats[i].timestamp)
                await controller.report(stats[i])
                i += 1
            clock["now"] = now
            controller.tick()

    asyncio.run(run())
    out: dict[str, list[dict[str, Any]]] = {rid: [] for rid in replicas}
    for e in controller.status()["switches"]:
        out[e["replica"]].append({k: e[k] for k in ("time", "from", "to", "reason")})
    return out


def _phase(report: Mapping[str, Any], t: float) -> str | None:
    return next((p["name"] for p in report["run"].get("phases", []) if p["start"] <= t < p["end"]), None)


def run_replay(samples: Sequence[Mapping[str, Any]], report: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """``replay`` over a run's window; switch times relative to the run's start, with their phase."""
    run = report["run"]
    t0 = run["t0"]
    per_replica = replay(samples, policy, t0, t0 + run["duration_s"] + run.get("drain_s", 0.0))
    for switches in per_replica.values():
        for s in switches:
            s["t"] = round(s["time"] - t0, 2)
            s["phase"] = _phase(report, s["t"])
    return {"label": run.get("label"), "policy": policy.name, "replicas": per_replica}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signals", required=True, help="the controller's signal log (JSON lines, may be .gz)")
    ap.add_argument("reports", nargs="+", help="report.json of each run to replay over")
    ap.add_argument("--policy", default="slo")
    ap.add_argument("--params", default="{}", help="the policy's parameters, as JSON")
    ap.add_argument("--out", help="write every run's replayed switches here as JSON")
    args = ap.parse_args(argv)
    try:
        policy = build_policy(args.policy, json.loads(args.params))
    except (ValueError, json.JSONDecodeError) as e:
        ap.error(str(e))
    samples = read_jsonl(args.signals)

    def lines(r: dict[str, Any]) -> list[str]:
        out = []
        for rid, switches in r["replicas"].items():
            to_fp8 = [s for s in switches if s["to"] == "fp8"]
            where = ", ".join(f"{s['t']:.1f} s ({s['phase']})" for s in to_fp8)
            out.append(f"{r['label']}: replica {rid}: {len(to_fp8)} switches to fp8: {where or '-'}")
        return out

    per_report(args.reports, lambda rep: run_replay(samples, rep, policy), lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
