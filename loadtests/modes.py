"""Each replica's precision mode over time, rebuilt from /admin/precision snapshots.

The server's switch list (exact times) is preferred; if a server gives no switch list, mode changes
seen between consecutive polls stand in for it (time known to within one poll interval).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

from loadtests.admin import Snapshot


@dataclass
class ModeTimeline:
    segments: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # replica -> [(since, mode)]
    switches: list[dict] = field(default_factory=list)  # {"time", "replica", "from", "to", "reason"}, by time
    source: str = "none"

    def mode_at(self, replica: str | None, t: float) -> str | None:
        """The replica's mode at unix time ``t``; None when the replica is unknown."""
        segs = self.segments.get(replica or "")
        if not segs:
            return None
        i = bisect.bisect_right([s for s, _ in segs], t) - 1
        return segs[max(i, 0)][1]


def _key(sw: dict) -> tuple:
    return round(float(sw["time"]), 6), str(sw["replica"]), sw.get("from"), sw.get("to")


def build_timeline(snapshots: Sequence[Snapshot]) -> ModeTimeline:
    """Per-replica mode segments from all snapshots of a run."""
    if not snapshots:
        return ModeTimeline()
    first_mode: dict[str, str] = {}
    for snap in snapshots:
        for rid, info in (snap.state.get("replicas") or {}).items():
            first_mode.setdefault(str(rid), info.get("mode"))
    has_list = any("switches" in s.state for s in snapshots)
    seen: dict[tuple, dict] = {}
    if has_list:
        for snap in snapshots:
            lists = [snap.state.get("switches") or []]
            # per-replica "switches" may be a list of entries or just a count (the app sends a count)
            lists += [info["switches"] for info in (snap.state.get("replicas") or {}).values()
                      if isinstance(info.get("switches"), list)]
            for sw in (x for lst in lists for x in lst):
                seen.setdefault(_key(sw), {"time": float(sw["time"]), "replica": str(sw["replica"]),
                                           "from": sw.get("from"), "to": sw.get("to"),
                                           "reason": sw.get("reason")})
        source = "admin switch list"
    else:
        prev: dict[str, str] = {}
        for snap in snapshots:
            for rid, info in (snap.state.get("replicas") or {}).items():
                rid, mode = str(rid), info.get("mode")
                if rid in prev and prev[rid] != mode:
                    sw = {"time": snap.time, "replica": rid, "from": prev[rid], "to": mode,
                          "reason": info.get("reason") or "seen by poll"}
                    seen[_key(sw)] = sw
                prev[rid] = mode
        source = "admin polls (times within one poll interval)"
    switches = sorted(seen.values(), key=lambda s: s["time"])
    segments: dict[str, list[tuple[float, str]]] = {}
    for rid in sorted(set(first_mode) | {s["replica"] for s in switches}):
        mine = [s for s in switches if s["replica"] == rid]
        initial = mine[0]["from"] if mine else first_mode.get(rid)
        segments[rid] = [(float("-inf"), initial)] + [(s["time"], s["to"]) for s in mine]
    return ModeTimeline(segments, switches, source)
