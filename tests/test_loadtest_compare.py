"""compare's adaptive-policy runs: auto:NAME entries, --policy-params, labels, and putting the app back.

The app-facing tests use the fake server (tests/fake_openai_server.py) with ``run_load`` replaced, so
they check what compare asks of /admin/policy and /admin/precision without generating load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from fake_openai_server import running_fake_server
from loadtests import compare
from loadtests.cli import build_parser, compare_policies, main
from loadtests.compare import PolicyRun, adaptive_params, markdown_table, parse_policies, run_compare, run_label
from loadtests.runner import LoadTestConfig

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_auto_name_entries_become_adaptive_runs_with_their_own_report_dir() -> None:
    runs = parse_policies(["fp16", "fp8", "auto", "auto:slo", "auto:queue_depth"])
    assert [(r.mode, r.policy, r.key) for r in runs] == [
        ("fp16", None, "fp16"), ("fp8", None, "fp8"), ("auto", None, "auto"),
        ("auto", "slo", "auto-slo"), ("auto", "queue_depth", "auto-queue_depth")]


@pytest.mark.parametrize("entries, match", [
    (["int4"], "unknown policies \\['int4'\\]"),
    (["auto:"], "unknown policies"),
    (["auto:../etc"], "unknown policies"),  # the name becomes a directory
    (["fp16", "auto:slo", "auto:slo"], "listed once each: \\['auto:slo'\\]"),
    ([], "no policies"),
])
def test_bad_or_repeated_policy_entries_are_rejected(entries, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse_policies(entries)


def test_slo_gets_the_load_tests_targets_unless_given_params() -> None:
    runs = parse_policies(["fp16", "auto:slo", "auto:queue_depth"])
    assert adaptive_params(runs, {}, 0.8, 0.05) == {"slo": {"ttft_s": 0.8, "tpot_s": 0.05}, "queue_depth": {}}
    given = {"slo": {"tpot_s": 0.2}, "queue_depth": {"high": 4}}
    assert adaptive_params(runs, given, 0.8, 0.05) == given
    with pytest.raises(ValueError, match="\\['token_budget'\\], which no auto:NAME run uses"):
        adaptive_params(runs, {"token_budget": {}}, 0.8, 0.05)


def test_labels_name_each_adaptive_policy() -> None:
    assert run_label(PolicyRun("fp8", "fp8"), None) == "static fp8"
    assert run_label(PolicyRun("auto:slo", "auto", "slo"), "slo") == "adaptive (slo)"
    assert run_label(PolicyRun("auto", "auto"), "queue_depth") == "adaptive (queue_depth)"
    assert run_label(PolicyRun("auto", "auto"), None) == "adaptive"  # an app without /admin/policy


def _compare_args(*extra: str):
    return build_parser().parse_args(["compare", "--host", "http://127.0.0.1:9", *extra])


def test_cli_reads_policies_and_repeated_policy_params() -> None:
    a = _compare_args("--policies", "fp16, auto:slo,auto:queue_depth", "--slo-tpot", "0.05",
                      "--policy-params", 'queue_depth={"high": 4, "min_dwell_s": 1}',
                      "--policy-params", 'slo={"ttft_s": 2}')
    assert compare_policies(a) == (("fp16", "auto:slo", "auto:queue_depth"),
                                   {"queue_depth": {"high": 4, "min_dwell_s": 1}, "slo": {"ttft_s": 2}})
    assert compare_policies(_compare_args())[0] == ("fp16", "fp8", "auto")
    twice = _compare_args("--policies", "auto:slo", "--policy-params", "slo={}", "--policy-params", "slo={}")
    with pytest.raises(ValueError, match="twice"):
        compare_policies(twice)


@pytest.mark.parametrize("value", ["queue_depth", "={}", "queue_depth={high: 4}", "queue_depth=[4]"])
def test_cli_rejects_malformed_policy_params(value, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        _compare_args("--policy-params", value)
    assert e.value.code == 2 and "--policy-params" in capsys.readouterr().err


def test_cli_rejects_params_for_a_policy_not_run_before_touching_the_app(capsys) -> None:
    with pytest.raises(SystemExit) as e:  # port 9 (discard): any request would fail differently
        main(["compare", "--host", "http://127.0.0.1:9", "--policies", "fp16,auto:slo",
              "--policy-params", 'queue_depth={"high": 4}'])
    assert e.value.code == 2 and "queue_depth" in capsys.readouterr().err


def _row(label: str, **kw) -> dict:
    return {"label": label, "ok": 1, "scheduled": 1, "errors": 0, "dropped": 0, "ttft_p90": 0.1, "tpot_p90": 0.01,
            "slo_ttft": 1.0, "slo_tpot": 1.0, "slo_both": 1.0, "worst_phase": None, "goodput_rps": 1.0,
            "goodput_tok_s": 8.0, "fp16_token_share": 1.0, "switches": 0, **kw}


def test_table_names_each_adaptive_policy_and_lists_its_params() -> None:
    rows = [_row("static fp16", policy_params=None),
            _row("adaptive (slo)", policy_params={"ttft_s": 1.0, "tpot_s": 0.1}),
            _row("adaptive (queue_depth)", policy_params={"high": 4})]
    md = markdown_table(rows, {"ttft_s": 1.0, "tpot_s": 0.1}, "spike")
    table = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table == ["policy", "static fp16", "adaptive (slo)", "adaptive (queue_depth)"]
    assert '- adaptive (slo): `{"tpot_s": 0.1, "ttft_s": 1.0}`' in md
    assert '- adaptive (queue_depth): `{"high": 4}`' in md


def _cfg(url: str, out: Path) -> LoadTestConfig:
    return LoadTestConfig(host=url, report_dir=out, admin_token=TOKEN, slo_ttft=0.7, slo_tpot=0.07)


def test_a_failed_run_still_restores_the_policy_and_auto(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def dies(cfg: LoadTestConfig) -> dict:
        seen["policy"] = requests.get(f"{cfg.host}/admin/policy", headers=AUTH).json()
        seen["precision"] = requests.get(f"{cfg.host}/admin/precision", headers=AUTH).json()
        raise RuntimeError("load generator died")

    monkeypatch.setattr(compare, "run_load", dies)
    with running_fake_server("--admin-token", TOKEN) as url:
        original = requests.get(f"{url}/admin/policy", headers=AUTH).json()
        requests.post(f"{url}/admin/precision", headers=AUTH, json={"mode": "fp16"}).raise_for_status()
        with pytest.raises(RuntimeError, match="died"):
            run_compare(_cfg(url, tmp_path), ("auto:slo", "fp8"), settle_s=0.3)
        after = requests.get(f"{url}/admin/policy", headers=AUTH).json()
        precision = requests.get(f"{url}/admin/precision", headers=AUTH).json()
    # During the run: slo, with the load test's SLO as its targets, and the replicas handed to it.
    assert (seen["policy"]["name"], seen["policy"]["params"]) == ("slo", {"ttft_s": 0.7, "tpot_s": 0.07})
    assert all(r["override"] is None for r in seen["precision"]["replicas"].values())
    # After: the policy from before, in auto.
    assert (after["name"], after["params"]) == (original["name"], original["params"])
    assert [c["name"] for c in after["changes"]] == ["slo", original["name"]]
    assert all(r["override"] is None for r in precision["replicas"].values())


def test_a_policy_the_app_lacks_fails_before_anything_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compare, "run_load", lambda cfg: pytest.fail("no run should start"))
    with running_fake_server("--admin-token", TOKEN) as url:
        with pytest.raises(ValueError, match="no policies \\['fifo'\\]"):
            run_compare(_cfg(url, tmp_path), ("fp8", "auto:fifo"), settle_s=0)
        after = requests.get(f"{url}/admin/policy", headers=AUTH).json()
        precision = requests.get(f"{url}/admin/precision", headers=AUTH).json()
    assert after["changes"] == []
    assert all(r["override"] is None and r["mode"] == "fp16" for r in precision["replicas"].values())
