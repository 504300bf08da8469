"""The replica's policy signals: the sliding window the stat-logger plugin fills each engine step."""

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")
from deployments import engine_stats  # noqa: E402
from deployments.engine_stats import EngineStatsWindow, PolicySignalsStatLogger  # noqa: E402


def test_window_reports_queue_state_percentiles_and_token_rates():
    w = EngineStatsWindow(window_s=60)
    w.record(4, 0, 0.1, 512, 0, [0.2], [])
    w.record(4, 3, 0.2, 0, 4, [], [0.05, 0.07, 0.09, 0.11])
    s = w.snapshot()
    assert (s["num_running"], s["num_waiting"], s["kv_cache_usage"]) == (4, 3, 0.2)
    assert s["ttft_p50"] == 0.2 and s["tpot_p50"] in (0.07, 0.09) and s["tpot_p90"] == 0.11
    assert s["scheduled_tokens_per_step"] == (512 + 4) / 2
    assert s["tokens_per_s"] > 0


def test_token_totals_count_from_start_and_outlive_the_window():
    w = EngineStatsWindow(window_s=0.0)  # every step leaves the window at once
    w.record(2, 0, 0.1, 300, 2, [], [])
    w.record(2, 0, 0.1, 0, 2, [], [0.01, 0.01])
    s = w.snapshot()
    assert (s["prompt_tokens_total"], s["output_tokens_total"]) == (300, 4)
    assert s["scheduled_tokens_per_step"] == 0.0  # the window itself is empty


def test_empty_window_has_no_latency_samples():
    s = EngineStatsWindow().snapshot()
    assert s["ttft_p90"] is None and s["tpot_p90"] is None and s["tokens_per_s"] == 0.0


def test_stat_logger_feeds_the_process_window_from_vllm_step_stats(monkeypatch):
    window = EngineStatsWindow(window_s=60)
    monkeypatch.setattr(engine_stats, "WINDOW", window)
    cfg = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_batched_tokens=2048))
    logger = PolicySignalsStatLogger(cfg)
    sched = SimpleNamespace(num_running_reqs=7, num_waiting_reqs=5, kv_cache_usage=0.5)
    it = SimpleNamespace(num_generation_tokens=7, num_prompt_tokens=100, time_to_first_tokens_iter=[0.3],
                         inter_token_latencies_iter=[0.02] * 6)
    logger.record(sched, it)
    logger.record(None, it)  # an output-only step keeps the last queue state
    s = window.snapshot()
    assert (s["num_running"], s["num_waiting"]) == (7, 5)
    assert s["scheduled_tokens_per_step"] == 107 and s["tpot_p90"] == 0.02 and s["ttft_p50"] == 0.3
    assert (s["prompt_tokens_total"], s["output_tokens_total"]) == (200, 14)
    assert window.max_num_batched_tokens == 2048


def test_request_tpot_comes_from_finished_requests_not_from_step_latencies(monkeypatch):
    window = EngineStatsWindow(window_s=60)
    monkeypatch.setattr(engine_stats, "WINDOW", window)
    logger = PolicySignalsStatLogger(SimpleNamespace(scheduler_config=SimpleNamespace(max_num_batched_tokens=2048)))
    done = [
        SimpleNamespace(num_generation_tokens=65, mean_time_per_output_token=0.012, decode_time=0.768),
        SimpleNamespace(num_generation_tokens=11, mean_time_per_output_token=0.02, decode_time=0.2),
        SimpleNamespace(num_generation_tokens=1, mean_time_per_output_token=0.0, decode_time=0.0),  # no TPOT
    ]
    # One slow prefill-carrying step dominates the per-token tail but not the per-request means.
    it = SimpleNamespace(num_generation_tokens=3, num_prompt_tokens=2048, time_to_first_tokens_iter=[],
                         inter_token_latencies_iter=[0.08, 0.08, 0.08], finished_requests=done)
    logger.record(None, it)
    s = window.snapshot()
    assert s["tpot_p90"] == 0.08
    assert s["req_tpot_p50"] in (0.012, 0.02) and s["req_tpot_p90"] == 0.02


def test_request_tpot_needs_two_output_tokens():
    assert engine_stats.request_tpot(SimpleNamespace(num_generation_tokens=1, mean_time_per_output_token=0.0)) is None
    assert engine_stats.request_tpot(SimpleNamespace(num_generation_tokens=5, mean_time_per_output_token=0.1)) == 0.1


def test_step_log_writes_one_line_per_step_only_when_asked(monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(engine_stats, "WINDOW", EngineStatsWindow(window_s=60))
    cfg = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_batched_tokens=2048))
    it = SimpleNamespace(num_generation_tokens=3, num_prompt_tokens=1000, time_to_first_tokens_iter=[],
                         inter_token_latencies_iter=[0.01, 0.04, 0.02])
    sched = SimpleNamespace(num_running_reqs=3, num_waiting_reqs=9, kv_cache_usage=0.1)
    monkeypatch.delenv("NESTEDFP_STEP_LOG", raising=False)
    assert PolicySignalsStatLogger(cfg).step_log is None
    path = tmp_path / "steps.jsonl"
    monkeypatch.setenv("NESTEDFP_STEP_LOG", str(path))
    logger = PolicySignalsStatLogger(cfg)
    logger.record(sched, it)
    logger.record(None, it)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["prompt_tokens"] == 1000 and lines[0]["gen_tokens"] == 3 and lines[0]["itl_max"] == 0.04
    assert (lines[1]["running"], lines[1]["waiting"]) == (3, 9) and lines[1]["t"] >= lines[0]["t"]
