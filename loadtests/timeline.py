"""timeline.png: offered load, p90 TTFT and TPOT against their targets, and each replica's mode over time.

One glance answers the product question: did latency stay within the SLO through the burst, and how
much of the time was each replica in full FP16?
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first
import numpy as np  # noqa: E402

from loadtests.modes import ModeTimeline  # noqa: E402
from loadtests.shapes import Schedule  # noqa: E402

MODE_COLORS = {"fp16": "tab:green", "fp8": "tab:orange"}


def _bins(end: float, duration: float) -> np.ndarray:
    width = max(0.5, duration / 60)
    return np.arange(0.0, end + width, width)


def _p90_per_bin(t: np.ndarray, v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    idx = np.digitize(t, edges) - 1
    return np.asarray([np.percentile(v[idx == i], 90) if np.any(idx == i) else np.nan
                       for i in range(len(edges) - 1)])


def plot_timeline(path: Path, report: dict, records: Sequence[dict], schedule: Schedule,
                  timeline: ModeTimeline) -> None:
    """Write the four-panel timeline of one run to ``path``."""
    t0 = report["run"]["t0"]
    ends = [r["t_start"] - t0 + (r["e2e"] or 0) for r in records if r.get("ok")]
    end = max([schedule.duration, *ends])
    edges = _bins(end, schedule.duration)
    width = edges[1] - edges[0]
    sent = np.asarray([r["t_sched"] + (r.get("lag") or 0) for r in records if not r.get("dropped")])
    ok = [r for r in records if r.get("ok")]
    t_ok = np.asarray([r["t_start"] - t0 for r in ok])

    fig, axes = plt.subplots(4, 1, figsize=(13, 10), sharex=True,
                             gridspec_kw={"height_ratios": [2, 2, 2, 0.5 + 0.4 * max(1, len(timeline.segments))]})
    ax = axes[0]
    ax.hist(sent, bins=edges, weights=np.full(len(sent), 1 / width), color="tab:blue", alpha=0.5,
            label="sent (req/s)")
    curve = schedule.rate_curve
    if curve:
        ax.step([c[0] for c in curve] + [schedule.duration], [c[1] for c in curve] + [curve[-1][1]],
                where="post", color="tab:blue", label="nominal offered load")
    done = np.asarray([r["t_start"] - t0 + r["e2e"] for r in ok])
    ax.hist(done, bins=edges, weights=np.full(len(done), 1 / width), histtype="step", color="black",
            label="completed (req/s)")
    n_fail = sum(1 for r in records if not r.get("ok"))
    ax.set_ylabel("requests / s")
    ax.set_title(f"{report['run']['shape']} load on {report['run']['host']}"
                 + (f" [{report['run']['label']}]" if report["run"].get("label") else "")
                 + f": {len(records)} requests, {n_fail} failed or dropped")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)

    for ax, key, target in ((axes[1], "ttft", report["slo"]["ttft_s"]), (axes[2], "tpot", report["slo"]["tpot_s"])):
        vals = [(t, r[key]) for t, r in zip(t_ok, ok) if r.get(key) is not None]
        if vals:
            tv, vv = np.asarray(vals).T
            ax.scatter(tv, vv, s=4, color="grey", alpha=0.3, label=f"{key.upper()} per request")
            ax.step(edges[:-1], _p90_per_bin(tv, vv, edges), where="post", color="tab:red",
                    label=f"p90 {key.upper()} (by request start)")
        ax.axhline(target, color="black", linestyle="--", label=f"target {target:g} s")
        ax.set_ylabel(f"{key.upper()} (s)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)

    ax = axes[3]
    rids = sorted(timeline.segments)
    for y, rid in enumerate(rids):
        segs = timeline.segments[rid]
        for (start, mode), nxt in zip(segs, [s[0] for s in segs[1:]] + [math.inf]):
            a, b = max(start - t0, 0.0), min(nxt - t0, end)
            if b > a:
                ax.broken_barh([(a, b - a)], (y - 0.4, 0.8), color=MODE_COLORS.get(mode, "tab:gray"))
    for sw in report["switches"]:
        if sw["replica"] in rids:
            ax.plot([sw["t"]], [rids.index(sw["replica"])], marker="|", color="black", markersize=14)
    ax.set_yticks(range(len(rids)), rids if rids else [])
    ax.set_ylim(-0.6, max(len(rids), 1) - 0.4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in MODE_COLORS.values()]
    ax.legend(handles, list(MODE_COLORS), loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    if not rids:
        ax.text(0.5, 0.5, f"no mode timeline ({report['mode_source']})", transform=ax.transAxes, ha="center")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("mode")

    for ax in axes:
        for i, ph in enumerate(schedule.phases):
            if i % 2:
                ax.axvspan(ph.start, ph.end, color="grey", alpha=0.08)
        ax.set_xlim(0, end)
    for ph in schedule.phases:
        axes[0].text((ph.start + ph.end) / 2, 0.98, ph.name, transform=axes[0].get_xaxis_transform(),
                     ha="center", va="top", fontsize=7, color="dimgray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
