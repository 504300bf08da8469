"""A short spike against the live app: the queue-depth policy goes fp8 in the burst and fp16 after."""

from __future__ import annotations

import json

from loadtests.runner import LoadTestConfig, run_load
from loadtests.shapes import ShapeOptions
from tests.conftest import ADMIN_TOKEN
from tests.live_app_helpers import modes, override, wait_for


def test_spike_against_the_live_app_switches_to_fp8_in_the_burst_and_back_after(live_app, tmp_path):
    host = live_app
    wait_for(lambda: len(modes(host)) == 2, 240, "two replicas reporting")
    override(host, "auto")
    wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "an idle app in fp16")
    out = tmp_path / "spike"
    report = run_load(
        LoadTestConfig(
            host=host,
            report_dir=out,
            shape="spike",
            options=ShapeOptions(
                # 12 req/s for 7 s: ~84 requests, under the app's 2 x 16 ongoing + 64 queued even if none
                # finished, so back-pressure (503) cannot trip on a slow machine; a 12 s burst did once.
                duration=45, base_rate=0.5, spike_rate=12.0, spike_start=8.0, spike_length=7.0,
                prompt_tokens=24, output_tokens=32, max_prompt_tokens=200, seed=1,
            ),
            slo_ttft=5.0,
            slo_tpot=0.5,
            admin_token=ADMIN_TOKEN,
            drain_timeout=60,
        )
    )
    print(json.dumps({p["name"]: {"requests": p["requests"], "tpot": p["tpot"], "share": p["token_share_by_mode"]}
                      for p in report["phases"]}, indent=1))
    o = report["overall"]["requests"]
    assert o["errors"] == 0 and o["dropped"] == 0 and o["ok"] == o["scheduled"] > 0
    to_fp8 = [s for s in report["switches"] if s["to"] == "fp8"]
    to_fp16 = [s for s in report["switches"] if s["to"] == "fp16"]
    assert to_fp8 and all(s["phase"] == "burst" for s in to_fp8), report["switches"]
    assert to_fp16 and to_fp16[-1]["phase"] == "base-after", report["switches"]
    assert report["phases"][0]["token_share_by_mode"] == {"fp16": 1.0}
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "locust_report.html").exists() and (out / "locust_stats.csv").exists()
