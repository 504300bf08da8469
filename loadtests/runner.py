"""One load test: schedule -> headless Locust subprocess -> report.json, CSV/HTML, timeline.png.

Locust runs in its own process because gevent must monkey-patch before anything else is imported;
this process polls /admin/precision meanwhile and builds the report from the per-request records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import requests

from loadtests.admin import AdminClient, AdminPoller
from loadtests.dispatch import LOCUST_CONFIG_ENV
from loadtests.jsonl import read_jsonl
from loadtests.modes import build_timeline
from loadtests.report import Slo, build_report
from loadtests.shapes import Schedule, ShapeOptions, build_schedule
from loadtests.timeline import plot_timeline
from loadtests.trace import REPO_ROOT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
STARTUP_ALLOWANCE_S = 30.0  # Locust import and start; part of the hard time bound


@dataclass
class LoadTestConfig:
    host: str
    report_dir: Path
    shape: str = "spike"
    options: ShapeOptions = field(default_factory=ShapeOptions)
    slo_ttft: float = 1.0  # seconds
    slo_tpot: float = 0.1  # seconds per output token
    endpoint: str = "completions"  # or "chat"
    model: str | None = None  # default: the first of GET /v1/models
    ignore_eos: bool = True
    admin_token: str | None = None  # default: $NESTEDFP_ADMIN_TOKEN
    poll_interval: float = 0.5
    request_timeout: float = 60.0
    drain_timeout: float = 30.0  # after the schedule, in-flight requests get this long
    max_concurrency: int = 512
    label: str | None = None  # e.g. the policy in a comparison


def check_host(host: str) -> str:
    """Only an explicit http(s) URL is ever targeted."""
    u = urlparse(host)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"--host must be an http(s) URL, got {host!r}")
    return host.rstrip("/")


def served_model(host: str, timeout: float = 10.0) -> str:
    """The first model id of GET /v1/models."""
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(f"{host}/v1/models", timeout=timeout)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def _locust_command(cfg: LoadTestConfig, out: Path, hard_limit_s: float) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1",
            "-t", f"{int(hard_limit_s)}s", "--host", cfg.host, "--csv", str(out / "locust"),
            "--html", str(out / "locust_report.html"), "--only-summary", "--stop-timeout", "5",
            "--logfile", str(out / "locust.log")]


def _run_locust(cfg: LoadTestConfig, schedule: Schedule, model: str, out: Path) -> int:
    """Run Locust headless until it stops by itself (or the hard bound kills it); its exit code."""
    locust_cfg = {
        "schedule": [[a.t, a.prompt_tokens, a.output_tokens] for a in schedule.arrivals],
        "endpoint": cfg.endpoint, "model": model, "ignore_eos": cfg.ignore_eos,
        "request_timeout": cfg.request_timeout, "drain_timeout": cfg.drain_timeout,
        "max_concurrency": cfg.max_concurrency,
        "records_path": str(out / "requests.jsonl"), "meta_path": str(out / "run_meta.json"),
    }
    (out / "locust_config.json").write_text(json.dumps(locust_cfg))
    hard = schedule.duration + cfg.drain_timeout + STARTUP_ALLOWANCE_S
    env = os.environ | {LOCUST_CONFIG_ENV: str(out / "locust_config.json"),
                        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with (out / "locust.out").open("w") as log:
        # cwd=out: Locust must not pick up a locust.conf or pyproject [tool.locust] from elsewhere
        proc = subprocess.Popen(_locust_command(cfg, out, hard), cwd=out, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=hard + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9


def run_load(cfg: LoadTestConfig) -> dict:
    """Run one load test and write report.json, Locust CSV/HTML and timeline.png into cfg.report_dir."""
    cfg = replace(cfg, host=check_host(cfg.host))
    schedule = build_schedule(cfg.shape, cfg.options)
    model = cfg.model or served_model(cfg.host)
    out = Path(cfg.report_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("requests.jsonl", "run_meta.json", "report.json", "timeline.png"):
        (out / stale).unlink(missing_ok=True)

    poller = AdminPoller(AdminClient(cfg.host, cfg.admin_token), interval=cfg.poll_interval)
    poller.start()
    try:
        exit_code = _run_locust(cfg, schedule, model, out)
    finally:
        poller.stop()
    meta_path = out / "run_meta.json"
    if not meta_path.exists():
        tail = (out / "locust.out").read_text()[-2000:]
        raise RuntimeError(f"Locust did not finish the schedule (exit {exit_code}); locust.out ends:\n{tail}")
    meta = json.loads(meta_path.read_text())
    requests_path = out / "requests.jsonl"
    records = sorted(read_jsonl(requests_path) if requests_path.exists() else [], key=lambda r: r["idx"])

    timeline = build_timeline(poller.snapshots)
    report = build_report(records, schedule.phases, schedule.duration, Slo(cfg.slo_ttft, cfg.slo_tpot),
                          timeline, meta["t0"], meta["t_end"])
    with requests_path.open("w") as f:  # now with each request's modes_served
        f.writelines(json.dumps(r) + "\n" for r in records)
    report = {
        "run": {
            "label": cfg.label, "host": cfg.host, "model": model, "endpoint": cfg.endpoint,
            "ignore_eos": cfg.ignore_eos, "shape": schedule.shape, "duration_s": schedule.duration,
            "shape_params": {k: v for k, v in schedule.params.items() if k not in ("clamping", "scaling")},
            "clamping": schedule.params.get("clamping"),
            "scaling": schedule.params.get("scaling"),
            "started_at": datetime.fromtimestamp(meta["t0"], timezone.utc).isoformat(),
            "t0": meta["t0"], "drain_s": meta["t_end"] - meta["t_dispatched"],
            "scheduled": len(schedule.arrivals), "sent": meta["sent"], "dropped": meta["dropped"],
            "cancelled_at_drain": meta["cancelled_at_drain"], "recorded": len(records),
            "max_concurrency": cfg.max_concurrency, "request_timeout_s": cfg.request_timeout,
            "phases": [asdict(p) for p in schedule.phases],
        },
        **report,
        "admin": {"polls": len(poller.snapshots), "poll_interval_s": cfg.poll_interval,
                  "errors": poller.errors[:5], "error_count": len(poller.errors)},
    }
    plot_timeline(out / "timeline.png", report, records, schedule, timeline)
    report["locust"] = {"exit_code": exit_code,
                        "files": sorted(p.name for p in out.iterdir() if p.name.startswith("locust"))}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
