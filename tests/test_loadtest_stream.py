"""One streaming request: TTFT/TPOT timing, token counts, replica/mode headers, and failures recorded."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests

from fake_openai_server import MODEL, running_fake_server
from loadtests.openai_stream import stream_request


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with running_fake_server() as url:
        yield url


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_times_every_token_and_reads_the_headers(fake_url: str, endpoint: str) -> None:
    r = stream_request(requests.Session(), fake_url, endpoint, MODEL, "a b c d", 6)
    assert r.ok and r.error is None and r.status == 200
    assert r.output_tokens == 6 and r.usage_reported and r.prompt_tokens == 4
    assert len(r.chunk_times) == 6 and r.chunk_times == sorted(r.chunk_times)
    assert r.ttft == r.chunk_times[0]
    assert r.tpot == pytest.approx((r.chunk_times[-1] - r.chunk_times[0]) / 5)
    assert r.tpot > 0.01  # the fake spaces tokens by >= 10 ms
    assert r.e2e >= r.chunk_times[-1]
    assert r.replica in ("replica-0", "replica-1") and r.mode == "fp16"


def test_a_one_token_output_has_no_tpot(fake_url: str) -> None:
    r = stream_request(requests.Session(), fake_url, "completions", MODEL, "x", 1)
    assert r.ok and r.output_tokens == 1 and r.tpot is None and r.ttft is not None


def test_http_errors_are_recorded_not_raised(fake_url: str) -> None:
    r = stream_request(requests.Session(), fake_url, "completions", "no-such-model", "x", 3)
    assert not r.ok and r.status == 404 and "404" in r.error


def test_connection_failures_are_recorded_not_raised() -> None:
    r = stream_request(requests.Session(), "http://127.0.0.1:9", "completions", MODEL, "x", 3, timeout=2)
    assert not r.ok and r.status is None and "ConnectionError" in r.error


class _BrokenStream(BaseHTTPRequestHandler):
    """Streams two tokens, then either stops without [DONE] or sends an error event."""

    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i in range(2):
            self.wfile.write(f'data: {{"choices": [{{"text": " t{i}"}}]}}\n\n'.encode())
        if self.path.endswith("/chat/completions"):
            self.wfile.write(b'data: {"error": {"message": "engine died"}}\n\n')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _BrokenStream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_stream_cut_before_done_is_a_failure(broken_url: str) -> None:
    r = stream_request(requests.Session(), broken_url, "completions", MODEL, "x", 5)
    assert not r.ok and "[DONE]" in r.error and len(r.chunk_times) == 2


def test_an_error_event_in_the_stream_is_a_failure(broken_url: str) -> None:
    r = stream_request(requests.Session(), broken_url, "chat", MODEL, "x", 5)
    assert not r.ok and "engine died" in r.error
