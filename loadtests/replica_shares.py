"""How a load test's requests were spread over replicas, per time bin of the client's send time.

Why: a run's totals per replica can look even while the router starved one replica for seconds at
a time (the first two-replica run on the H200 sent every request of a 10-s stretch to one replica
while the other drained; docs/BENCHMARKS.md). Binning by send time shows it. Input is a run's
``requests.jsonl`` (or a .gz of it), whose records carry the serving replica from the response
header; requests that never reached a replica (dropped, failed) count as ``none``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadtests.jsonl import read_jsonl


def replica_shares(records: Iterable[dict[str, Any]], bin_s: float = 5.0) -> list[dict[str, Any]]:
    """Per bin of ``t_sched`` (seconds since the run's start): requests per replica, and the largest
    replica's share of those that reached one (1/N when even, 1.0 when one replica took them all)."""
    bins: dict[int, Counter] = {}
    replicas: set[str] = set()
    for r in records:
        rep = r.get("replica") or "none"
        if rep != "none":
            replicas.add(rep)
        bins.setdefault(int(r["t_sched"] // bin_s), Counter())[rep] += 1
    rows = []
    for b in sorted(bins):
        counts = bins[b]
        served = sum(n for rep, n in counts.items() if rep != "none")
        top = max((counts[rep] for rep in replicas), default=0)
        rows.append({
            "start_s": b * bin_s,
            "requests": {rep: counts.get(rep, 0) for rep in sorted(replicas) + ["none"]},
            "largest_share": round(top / served, 3) if served else None,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.replica_shares", description=__doc__.splitlines()[0])
    p.add_argument("requests", type=Path, help="a run's requests.jsonl (or .jsonl.gz)")
    p.add_argument("--bin", type=float, default=5.0, help="bin width in seconds")
    a = p.parse_args(argv)
    rows = replica_shares(read_jsonl(a.requests), a.bin)
    names = list(rows[0]["requests"]) if rows else []
    print("start_s " + " ".join(f"{n:>9}" for n in names) + "  largest_share")
    for r in rows:
        share = "-" if r["largest_share"] is None else f"{r['largest_share']:.2f}"
        print(f"{r['start_s']:7.0f} " + " ".join(f"{r['requests'][n]:>9}" for n in names) + f"  {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
