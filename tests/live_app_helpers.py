"""Small helpers for tests against the live app."""

from __future__ import annotations

import time

import requests

from tests.conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def status(host: str) -> dict:
    r = requests.get(f"{host}/admin/precision", headers=AUTH, timeout=10)
    r.raise_for_status()
    return r.json()


def override(host: str, mode: str, replica: str | None = None) -> requests.Response:
    body = {"mode": mode} if replica is None else {"mode": mode, "replica": replica}
    return requests.post(f"{host}/admin/precision", headers=AUTH, json=body, timeout=10)


def policy(host: str) -> dict:
    r = requests.get(f"{host}/admin/policy", headers=AUTH, timeout=10)
    r.raise_for_status()
    return r.json()


def set_policy(host: str, name: str, params: dict | None = None) -> requests.Response:
    return requests.post(f"{host}/admin/policy", headers=AUTH, json={"name": name, "params": params}, timeout=10)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.25):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the service may be restarting
            last = e
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


def modes(host: str) -> dict[str, tuple[str, str]]:
    """replica -> (assigned mode, mode the replica itself reports having applied)."""
    return {rid: (r["mode"], r["reported_mode"]) for rid, r in status(host)["replicas"].items() if not r["stale"]}
