"""Run the same load shape once per precision policy and tabulate the results side by side.

Static fp16 and fp8 are set with POST /admin/precision overrides; "auto" hands the replicas back to the
adaptive policy. The app is left in "auto" afterwards, whatever happens.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from loadtests.admin import AdminClient, AdminError
from loadtests.runner import LoadTestConfig, check_host, run_load

POLICIES = {"fp16": "static fp16", "fp8": "static fp8", "auto": "adaptive"}


def summary_row(policy: str, report: dict) -> dict:
    """The comparison's numbers for one run (overall, plus the phase with the worst SLO attainment)."""
    o = report["overall"]
    phases = [p for p in report["phases"] if p["slo_attainment"]["both"] is not None]
    worst = min(phases, key=lambda p: p["slo_attainment"]["both"]) if phases else None
    return {
        "policy": policy, "label": POLICIES.get(policy, policy),
        "scheduled": o["requests"]["scheduled"], "ok": o["requests"]["ok"],
        "errors": o["requests"]["errors"], "dropped": o["requests"]["dropped"],
        "ttft_p90": o["ttft"]["p90"], "ttft_p99": o["ttft"]["p99"],
        "tpot_p90": o["tpot"]["p90"], "tpot_p99": o["tpot"]["p99"],
        "slo_ttft": o["slo_attainment"]["ttft"], "slo_tpot": o["slo_attainment"]["tpot"],
        "slo_both": o["slo_attainment"]["both"],
        "goodput_rps": o["goodput"]["requests_per_s"], "goodput_tok_s": o["goodput"]["output_tokens_per_s"],
        "fp16_token_share": o["token_share_by_mode"].get("fp16", 0.0) if o["token_share_by_mode"] else None,
        "switches": len(report["switches"]),
        "worst_phase": worst["name"] if worst else None,
        "worst_phase_slo_both": worst["slo_attainment"]["both"] if worst else None,
    }


def _fmt(v: object, pct: bool = False, ms: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * float(v):.1f}%"
    if ms:
        return f"{1000 * float(v):.1f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], slo: dict, shape: str) -> str:
    """compare.md: one row per policy."""
    head = ("| policy | ok / scheduled | errors | dropped | p90 TTFT ms | p90 TPOT ms | TTFT SLO | TPOT SLO "
            "| both SLOs | worst phase (both) | goodput req/s | goodput tok/s | fp16 token share | switches |")
    lines = [f"Shape `{shape}`; SLO targets: TTFT <= {slo['ttft_s']:g} s, TPOT <= {slo['tpot_s']:g} s.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        worst = f"{r['worst_phase']} {_fmt(r['worst_phase_slo_both'], pct=True)}" if r["worst_phase"] else "-"
        lines.append(
            f"| {r['label']} | {r['ok']} / {r['scheduled']} | {r['errors']} | {r['dropped']} "
            f"| {_fmt(r['ttft_p90'], ms=True)} | {_fmt(r['tpot_p90'], ms=True)} | {_fmt(r['slo_ttft'], pct=True)} "
            f"| {_fmt(r['slo_tpot'], pct=True)} | {_fmt(r['slo_both'], pct=True)} | {worst} "
            f"| {_fmt(r['goodput_rps'])} | {_fmt(r['goodput_tok_s'])} | {_fmt(r['fp16_token_share'], pct=True)} "
            f"| {r['switches']} |")
    return "\n".join(lines) + "\n"


def run_compare(base: LoadTestConfig, policies: tuple[str, ...] = ("fp16", "fp8", "auto"),
                settle_s: float = 5.0) -> dict:
    """One run per policy into <report_dir>/<policy>/; writes compare.json and compare.md."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    base = replace(base, host=check_host(base.host))
    out = Path(base.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    admin = AdminClient(base.host, base.admin_token)
    rows, reports = [], {}
    try:
        for policy in policies:
            admin.set_mode(policy)
            time.sleep(settle_s)  # let queued work drain and the override take hold
            state = admin.get()
            modes = {rid: info.get("mode") for rid, info in (state.get("replicas") or {}).items()}
            if policy != "auto" and any(m != policy for m in modes.values()):
                raise AdminError(f"override {policy!r} did not take hold: {modes}")
            rep = run_load(replace(base, report_dir=out / policy, label=POLICIES[policy]))
            reports[policy] = rep
            rows.append(summary_row(policy, rep) | {"modes_before_run": modes})
    finally:
        try:
            admin.set_mode("auto")
        except AdminError as e:  # do not hide the run's own error; say the app may still be overridden
            print(f"warning: could not hand the replicas back to the policy: {e}", file=sys.stderr)
    slo = next(iter(reports.values()))["slo"]
    result = {"shape": base.shape, "slo": slo, "settle_s": settle_s, "rows": rows,
              "reports": {p: str(out / p / "report.json") for p in reports},
              "run": {p: reports[p]["run"] for p in reports}}
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown_table(rows, slo, base.shape))
    return result
