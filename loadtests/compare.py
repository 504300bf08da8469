"""Run the same load shape once per precision policy and tabulate the results side by side.

Static fp16 and fp8 are set with POST /admin/precision overrides; "auto" hands the replicas back to the
adaptive policy the app runs, and "auto:NAME" first switches the app to adaptive policy NAME with
POST /admin/policy, so one comparison can pit several adaptive policies against each other. The app is
left in "auto" under the policy it had before, whatever happens.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from loadtests.admin import AdminClient, AdminError
from loadtests.runner import LoadTestConfig, check_host, run_load

POLICIES = {"fp16": "static fp16", "fp8": "static fp8", "auto": "adaptive"}
AUTO_PREFIX = "auto:"


@dataclass(frozen=True)
class PolicyRun:
    """One run of a comparison: a static mode, the app's adaptive policy, or a named adaptive policy."""

    entry: str  # as given: "fp16", "fp8", "auto" or "auto:NAME"
    mode: str  # what POST /admin/precision gets: "fp16", "fp8" or "auto"
    policy: Optional[str] = None  # auto:NAME: the policy POST /admin/policy sets before the run

    @property
    def key(self) -> str:
        """The run's report subdirectory: "auto:slo" -> "auto-slo" (a colon is no good in paths)."""
        return self.entry.replace(":", "-")


def parse_policies(entries: Sequence[str]) -> list[PolicyRun]:
    """Runs for fp16, fp8, auto and auto:NAME entries; anything else, or a repeat, raises ValueError."""
    runs, bad = [], []
    for e in entries:
        name = e[len(AUTO_PREFIX):] if e.startswith(AUTO_PREFIX) else None
        if e in POLICIES:
            runs.append(PolicyRun(e, e))
        elif name and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            runs.append(PolicyRun(e, "auto", name))
        else:
            bad.append(e)
    if bad:
        raise ValueError(f"unknown policies {bad}; choose from {list(POLICIES)} or auto:NAME (e.g. auto:slo)")
    repeated = sorted({r.entry for r in runs if [x.entry for x in runs].count(r.entry) > 1})
    if repeated or not runs:
        raise ValueError(f"policies must be listed once each: {repeated}" if repeated else "no policies to run")
    return runs


def adaptive_params(runs: Sequence[PolicyRun], given: Mapping[str, Mapping[str, Any]],
                    slo_ttft: float, slo_tpot: float) -> dict[str, dict[str, Any]]:
    """The params each auto:NAME run sets: ``given[NAME]``, else none, except "slo", which needs a
    target and gets the load test's own SLO (``ttft_s``/``tpot_s``) so policy and report judge alike.
    Params for a policy that no auto:NAME run uses raise ValueError: most likely a typo."""
    names = [r.policy for r in runs if r.policy]
    unused = sorted(set(given) - set(names))
    if unused:
        raise ValueError(f"params given for {unused}, which no auto:NAME run uses (runs: {names})")
    defaults = {"slo": {"ttft_s": slo_ttft, "tpot_s": slo_tpot}}
    return {n: dict(given[n]) if n in given else dict(defaults.get(n, {})) for n in names}


def run_label(run: PolicyRun, policy_name: Optional[str]) -> str:
    """The table's name for a run: adaptive runs name their policy, e.g. "adaptive (slo)"."""
    if run.mode != "auto":
        return POLICIES[run.mode]
    return f"adaptive ({policy_name})" if policy_name else POLICIES["auto"]


def summary_row(policy: str, report: dict, label: Optional[str] = None) -> dict:
    """The comparison's numbers for one run (overall, plus the phase with the worst SLO attainment)."""
    o = report["overall"]
    phases = [p for p in report["phases"] if p["slo_attainment"]["both"] is not None]
    worst = min(phases, key=lambda p: p["slo_attainment"]["both"]) if phases else None
    return {
        "policy": policy, "label": label or POLICIES.get(policy, policy),
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
    params = [f"- {r['label']}: `{json.dumps(r['policy_params'], sort_keys=True)}`"
              for r in rows if r.get("policy_params") is not None]
    if params:
        lines += ["", "Adaptive policy parameters:", *params]
    return "\n".join(lines) + "\n"


def run_compare(base: LoadTestConfig, policies: Sequence[str] = ("fp16", "fp8", "auto"),
                settle_s: float = 5.0, policy_params: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict:
    """One run per policy into <report_dir>/<policy>/ (auto:NAME into auto-NAME/); writes compare.json and
    compare.md. ``policy_params`` maps an auto:NAME run's NAME to the params POST /admin/policy sends.

    The adaptive policy in force is read first; plain "auto" runs under it (restored if an auto:NAME
    run came before), and it is restored at the end, with mode "auto", whatever happens.
    """
    runs = parse_policies(policies)
    params = adaptive_params(runs, policy_params or {}, base.slo_ttft, base.slo_tpot)
    base = replace(base, host=check_host(base.host))
    admin = AdminClient(base.host, base.admin_token)
    before: Optional[dict] = None  # {"name", "params"} of the policy in force; None: no /admin/policy
    try:
        got = admin.get_policy()
        before = {"name": got["name"], "params": got.get("params") or {}}
    except AdminError as e:
        if params:
            raise AdminError(f"auto:NAME runs need GET /admin/policy: {e}") from e
        got = {}  # an app without /admin/policy: plain "auto" runs whatever policy it has, unnamed
    missing = [n for n in params if "available" in got and n not in got["available"]]
    if missing:
        raise ValueError(f"the app has no policies {missing}; it has {got['available']}")
    out = Path(base.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, reports, paths = [], {}, {}
    current, touched = before, False
    try:
        for run in runs:
            name = None
            if run.mode == "auto" and before is not None:
                target = {"name": run.policy, "params": params[run.policy]} if run.policy else before
                if target != current:
                    touched, current = True, target
                    answer = admin.set_policy(target["name"], target["params"])
                    if answer.get("policy", target["name"]) != target["name"]:
                        raise AdminError(f"policy {target['name']!r} did not take hold: {answer.get('policy')!r}")
                name = current["name"]
            admin.set_mode(run.mode)
            time.sleep(settle_s)  # let queued work drain and the override or policy take hold
            state = admin.get()
            modes = {rid: info.get("mode") for rid, info in (state.get("replicas") or {}).items()}
            if run.mode != "auto" and any(m != run.mode for m in modes.values()):
                raise AdminError(f"override {run.mode!r} did not take hold: {modes}")
            label = run_label(run, name)
            rep = run_load(replace(base, report_dir=out / run.key, label=label))
            reports[run.entry], paths[run.entry] = rep, str(out / run.key / "report.json")
            rows.append(summary_row(run.entry, rep, label) | {
                "modes_before_run": modes, "policy_name": name,
                "policy_params": current["params"] if name is not None else None})
    finally:
        if touched:  # before is set: touched only when there was a policy to come back to
            try:
                admin.set_policy(before["name"], before["params"])
            except AdminError as e:
                print(f"warning: could not restore adaptive policy {before['name']!r}: {e}", file=sys.stderr)
        try:
            admin.set_mode("auto")
        except AdminError as e:  # do not hide the run's own error; say the app may still be overridden
            print(f"warning: could not hand the replicas back to the policy: {e}", file=sys.stderr)
    slo = next(iter(reports.values()))["slo"]
    result = {"shape": base.shape, "slo": slo, "settle_s": settle_s, "rows": rows,
              "policy_before": before,
              "reports": paths,
              "run": {k: reports[k]["run"] for k in reports}}
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown_table(rows, slo, base.shape))
    return result
