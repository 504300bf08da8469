"""Command line: ``python -m loadtests run|compare --host URL --shape spike --duration 120 --report DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from loadtests.compare import POLICIES, adaptive_params, parse_policies, run_compare
from loadtests.runner import LoadTestConfig, run_load
from loadtests.shapes import SHAPES, ShapeOptions


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def _policy_params(s: str) -> tuple[str, dict]:
    """One --policy-params value: NAME=JSON object."""
    name, sep, raw = s.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME='{{...}}', got {s!r}")
    try:
        params = json.loads(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{name.strip()}: params are not JSON ({e})") from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError(f"{name.strip()}: params must be a JSON object, got {raw!r}")
    return name.strip(), params


def compare_policies(a: argparse.Namespace) -> tuple[tuple[str, ...], dict[str, dict]]:
    """The compare command's policy entries and the params of each auto:NAME, checked before any run.

    Raises ValueError for an unknown or repeated entry, a NAME given twice, or params no run uses.
    """
    policies = tuple(p.strip() for p in a.policies.split(",") if p.strip())
    params: dict[str, dict] = {}
    for name, value in a.policy_params or ():
        if name in params:
            raise ValueError(f"--policy-params given twice for {name!r}")
        params[name] = value
    adaptive_params(parse_policies(policies), params, a.slo_ttft, a.slo_tpot)
    return policies, params


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--host", required=True, help="base URL of the app, e.g. http://127.0.0.1:8000")
    g.add_argument("--report", type=Path, default=None, help="output directory (default reports/<shape>-<time>)")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument("--model", default=None, help="default: the first model of GET /v1/models")
    g.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not send ignore_eos (outputs may end before max_tokens)")
    g.add_argument("--admin-token", default=None, help="bearer token for /admin/precision and /admin/policy "
                                                       "(default $NESTEDFP_ADMIN_TOKEN)")
    g.add_argument("--poll-interval", type=float, default=0.5, help="seconds between /admin/precision polls")
    g = p.add_argument_group("SLO")
    g.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT target, seconds")
    g.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT target, seconds per output token")
    g = p.add_argument_group("shape")
    g.add_argument("--shape", choices=SHAPES, default="spike")
    g.add_argument("--duration", type=float, default=60.0, help="seconds of scheduled arrivals")
    g.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt-tokens", type=int, default=64, help="synthetic shapes: prompt length")
    g.add_argument("--output-tokens", type=int, default=32, help="synthetic shapes: max_tokens")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="clamp prompt lengths")
    g.add_argument("--max-output-tokens", type=int, default=None, help="clamp output lengths")
    g.add_argument("--base-rate", type=float, default=1.0, help="spike: req/s around the burst")
    g.add_argument("--spike-rate", type=float, default=8.0, help="spike: req/s during the burst")
    g.add_argument("--spike-start", type=float, default=None, help="spike: seconds (default duration/3)")
    g.add_argument("--spike-length", type=float, default=None, help="spike: seconds (default duration/3)")
    g.add_argument("--step-rates", type=_floats, default=(1.0, 2.0, 4.0, 8.0), help="step: e.g. 1,2,4,8 (req/s)")
    g.add_argument("--sine-mean", type=float, default=4.0)
    g.add_argument("--sine-amplitude", type=float, default=3.0)
    g.add_argument("--sine-period", type=float, default=None, help="seconds (default duration/2)")
    g.add_argument("--window", type=float, default=None, help="sinusoid/trace phase length (default duration/6)")
    g.add_argument("--trace", default=None, help="trace CSV path or file name in the data directory")
    g.add_argument("--data-dir", default=None, help="default $NESTEDFP_DATA_DIR, else <repo>/../shared/data")
    g.add_argument("--trace-start", type=float, default=0.0, help="seconds into the trace to start at")
    g.add_argument("--time-scale", type=float, default=1.0, help="trace: stretch time by this (>1 lowers the rate)")
    g.add_argument("--rate-scale", type=float, default=1.0, help="trace: keep this fraction of requests")
    g = p.add_argument_group("limits")
    g.add_argument("--request-timeout", type=float, default=60.0)
    g.add_argument("--drain-timeout", type=float, default=30.0, help="wait this long for in-flight requests")
    g.add_argument("--max-concurrency", type=int, default=512, help="cap on in-flight requests (over it: dropped)")
    g.add_argument("--fail-on-error", action="store_true", help="exit 1 if any request failed or was dropped")


def config_from_args(a: argparse.Namespace) -> LoadTestConfig:
    """The LoadTestConfig the parsed options describe."""
    opts = ShapeOptions(
        duration=a.duration, arrivals=a.arrivals, seed=a.seed, prompt_tokens=a.prompt_tokens,
        output_tokens=a.output_tokens, max_prompt_tokens=a.max_prompt_tokens, max_output_tokens=a.max_output_tokens,
        base_rate=a.base_rate, spike_rate=a.spike_rate, spike_start=a.spike_start, spike_length=a.spike_length,
        step_rates=a.step_rates, sine_mean=a.sine_mean, sine_amplitude=a.sine_amplitude,
        sine_period=a.sine_period, window=a.window, trace_file=a.trace, data_dir=a.data_dir,
        trace_start=a.trace_start, time_scale=a.time_scale, rate_scale=a.rate_scale)
    report = a.report or Path("reports") / f"{a.shape}-{datetime.now():%Y%m%d-%H%M%S}"
    return LoadTestConfig(
        host=a.host, report_dir=report, shape=a.shape, options=opts, slo_ttft=a.slo_ttft, slo_tpot=a.slo_tpot,
        endpoint=a.endpoint, model=a.model, ignore_eos=a.ignore_eos, admin_token=a.admin_token,
        poll_interval=a.poll_interval, request_timeout=a.request_timeout, drain_timeout=a.drain_timeout,
        max_concurrency=a.max_concurrency)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def format_summary(report: dict) -> str:
    """A few lines per phase for the terminal; report.json has everything."""
    lines = [f"{'phase':<22} {'sched':>5} {'ok':>5} {'err':>4} {'drop':>4} {'p90 TTFT':>9} {'p90 TPOT':>9} "
             f"{'SLO both':>8} {'goodput':>8}  tokens by mode"]
    for p in [*report["phases"], report["overall"]]:
        q = p["requests"]
        shares = " ".join(f"{m} {_pct(v)}" for m, v in p["token_share_by_mode"].items())
        gp = p["goodput"]["requests_per_s"]
        lines.append(f"{p['name']:<22} {q['scheduled']:>5} {q['ok']:>5} {q['errors']:>4} {q['dropped']:>4} "
                     f"{_ms(p['ttft']['p90']):>7}ms {_ms(p['tpot']['p90']):>7}ms "
                     f"{_pct(p['slo_attainment']['both']):>8} {'-' if gp is None else f'{gp:.2f}/s':>8}  {shares}")
    lines.append(f"mode switches ({report['mode_source']}):")
    lines += [f"  t={s['t']:7.2f}s {s['replica']}: {s['from']} -> {s['to']} ({s['phase']}; {s['reason']})"
              for s in report["switches"]] or ["  none"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description="NestedFP burst load tests")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_common(sub.add_parser("run", help="one load test -> report.json, Locust CSV/HTML, timeline.png"))
    cmp = sub.add_parser("compare", help="the same shape under static fp16, static fp8 and adaptive policies")
    _add_common(cmp)
    cmp.add_argument("--policies", default=",".join(POLICIES),
                     help="comma-separated runs: fp16, fp8 (static overrides), auto (the app's adaptive policy) "
                          "and auto:NAME (switch the app to adaptive policy NAME for that run via /admin/policy), "
                          "e.g. fp16,fp8,auto:slo,auto:queue_depth; the app's policy is restored afterwards")
    cmp.add_argument("--policy-params", type=_policy_params, action="append", metavar="NAME=JSON",
                     help="params for the auto:NAME run, e.g. --policy-params queue_depth='{\"high\": 4}'; "
                          "repeat once per policy. Without it a policy gets its defaults, except slo, which "
                          "gets ttft_s/tpot_s from --slo-ttft/--slo-tpot")
    cmp.add_argument("--settle", type=float, default=5.0, help="seconds to wait after switching policy")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command == "compare":
        try:
            policies, params = compare_policies(a)
        except ValueError as e:
            parser.error(str(e))
    cfg = config_from_args(a)
    if a.command == "run":
        report = run_load(cfg)
        print(format_summary(report))
        print(f"report: {Path(cfg.report_dir) / 'report.json'}")
        failed = report["overall"]["requests"]["errors"] + report["overall"]["requests"]["dropped"]
    else:
        result = run_compare(cfg, policies, a.settle, params)
        print((Path(cfg.report_dir) / "compare.md").read_text())
        failed = sum(r["errors"] + r["dropped"] for r in result["rows"])
    return 1 if a.fail_on_error and failed else 0


if __name__ == "__main__":
    sys.exit(main())
