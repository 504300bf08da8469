"""One streaming call to the OpenAI-compatible API, timed token by token.

TTFT is the time to the first chunk that carries output text; TPOT is the mean gap between output
tokens after the first, (t_last - t_first) / (output_tokens - 1). Output tokens come from the final
usage chunk (``stream_options.include_usage``) when the server sends it, else from the chunk count.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
REPLICA_HEADER = "x-nestedfp-replica"
MODE_HEADER = "x-nestedfp-mode"


@dataclass
class StreamResult:
    ok: bool = False
    status: int | None = None
    error: str | None = None
    replica: str | None = None  # x-nestedfp-replica
    mode: str | None = None  # x-nestedfp-mode: the replica's mode when the request started
    t_start: float = 0.0  # unix seconds
    ttft: float | None = None  # seconds
    tpot: float | None = None  # seconds per output token after the first
    e2e: float | None = None  # seconds, request sent to stream end
    prompt_tokens: int | None = None  # from usage, when reported
    output_tokens: int = 0
    usage_reported: bool = False
    chunk_times: list[float] = field(default_factory=list)  # offsets from t_start of text chunks

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_times"] = [round(x, 4) for x in self.chunk_times]
        return d


def build_payload(endpoint: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool) -> dict:
    """Request body; ``ignore_eos`` (a vLLM extension) makes the output exactly ``max_tokens`` long."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}, "temperature": 0.0}
    if ignore_eos:
        body["ignore_eos"] = True
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    elif endpoint == "completions":
        body["prompt"] = prompt
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {sorted(ENDPOINTS)}")
    return body


def _chunk_text(obj: dict) -> tuple[str, bool]:
    """Output text of one SSE chunk and whether it carries a finish reason."""
    text, finished = "", False
    for ch in obj.get("choices") or []:
        delta = ch.get("delta")
        text += (delta.get("content") or "") if isinstance(delta, dict) else (ch.get("text") or "")
        finished = finished or ch.get("finish_reason") is not None
    return text, finished


def stream_request(session: requests.Session, base_url: str, endpoint: str, model: str, prompt: str,
                   max_tokens: int, *, ignore_eos: bool = True, timeout: float = 60.0) -> StreamResult:
    """Send one streaming request and time it; never raises for server or network errors."""
    res = StreamResult(t_start=time.time())
    t0 = time.perf_counter()
    t_finish: float | None = None
    done = False
    try:
        body = build_payload(endpoint, model, prompt, max_tokens, ignore_eos)
        with session.post(base_url.rstrip("/") + ENDPOINTS[endpoint], json=body, stream=True,
                          timeout=(min(10.0, timeout), timeout)) as resp:
            res.status = resp.status_code
            res.replica = resp.headers.get(REPLICA_HEADER)
            res.mode = resp.headers.get(MODE_HEADER)
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return res
            buf = b""
            for data in resp.iter_content(chunk_size=None):
                now = time.perf_counter() - t0
                if now > timeout:
                    res.error = f"timeout: stream longer than {timeout:g}s"
                    return res
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(payload)
                    if "error" in obj:
                        res.error = f"stream error: {str(obj['error'])[:200]}"
                        return res
                    text, finished = _chunk_text(obj)
                    if text:
                        res.chunk_times.append(now)
                    elif finished and t_finish is None:
                        t_finish = now
                    if obj.get("usage"):
                        res.usage_reported = True
                        res.prompt_tokens = obj["usage"].get("prompt_tokens")
                        res.output_tokens = int(obj["usage"].get("completion_tokens") or 0)
    except Exception as e:  # noqa: BLE001 -- any failure is a failed request, recorded with its cause
        res.error = f"{type(e).__name__}: {e}"[:300]
        return res
    res.e2e = time.perf_counter() - t0
    if not done:
        res.error = "stream ended without [DONE]"
        return res
    if not res.usage_reported:
        res.output_tokens = len(res.chunk_times)
    first = res.chunk_times[0] if res.chunk_times else t_finish
    if first is None:
        res.error = "no output streamed"
        return res
    res.ttft = first
    if res.output_tokens >= 2 and res.chunk_times:
        res.tpot = (res.chunk_times[-1] - first) / (res.output_tokens - 1)
    res.ok = True
    return res
