"""Client for /admin/precision and /admin/policy: read replica modes and switches, set static modes and
adaptive policies for comparisons.

The poller keeps every snapshot taken during a run; the union of their ``switches`` lists survives a
server that keeps only its most recent switches.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import requests

TOKEN_ENV = "NESTEDFP_ADMIN_TOKEN"


class AdminError(RuntimeError):
    pass


class AdminClient:
    def __init__(self, host: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.url = host.rstrip("/") + "/admin/precision"
        self.policy_url = host.rstrip("/") + "/admin/policy"
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # straight to the host: no proxies from the environment

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        """One admin request; anything but HTTP 200 raises AdminError with the server's message."""
        what = f"{method} {url}" + (f" {body}" if body is not None else "")
        try:
            r = self.session.request(method, url, json=body, headers=self.headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise AdminError(f"{what}: {e}") from e
        if r.status_code != 200:
            raise AdminError(f"{what}: HTTP {r.status_code} {r.text[:200]}")
        return r.json() if r.content else {}

    def get(self) -> dict:
        """GET /admin/precision; raises AdminError when it is not available."""
        return self._call("GET", self.url)

    def set_mode(self, mode: str, replica: str | None = None) -> dict:
        """POST a static mode ("fp16"/"fp8") or hand back to the policy ("auto")."""
        return self._call("POST", self.url, {"mode": mode} | ({"replica": replica} if replica else {}))

    def get_policy(self) -> dict:
        """GET /admin/policy: the adaptive policy's ``name`` and ``params``, and the ``available`` names."""
        return self._call("GET", self.policy_url)

    def set_policy(self, name: str, params: Mapping[str, Any] | None = None) -> dict:
        """POST /admin/policy: the controller decides with policy ``name`` from its next tick."""
        return self._call("POST", self.policy_url, {"name": name, "params": dict(params or {})})


@dataclass
class Snapshot:
    time: float  # unix seconds when the response arrived
    state: dict


@dataclass
class AdminPoller:
    """Polls GET /admin/precision on a thread every ``interval`` seconds until stopped."""

    client: AdminClient
    interval: float = 0.5
    snapshots: list[Snapshot] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def poll_once(self) -> None:
        try:
            state = self.client.get()
            self.snapshots.append(Snapshot(time.time(), state))
        except AdminError as e:
            self.errors.append(str(e))

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="admin-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.client.timeout + 1)
        self.poll_once()  # the final state, with the run's full switch list
