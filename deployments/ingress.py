"""The HTTP and handle front door: Ray Serve LLM's OpenAI ingress plus precision admin and metrics.

OpenAI routes, model cards, request validation and SSE framing come from ``OpenAiIngress``.
Added here: response headers naming the replica and its mode, ``/admin/precision`` and
``/admin/policy`` (bearer token), ``/metrics``, OpenAI-style 4xx bodies for malformed requests, 503
on overload, requests sent again when their replica dies before the first output, and a typed Python API
for ``DeploymentHandle`` callers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray.exceptions import RayActorError
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress, init
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from deployments.client_types import CompletionInput, CompletionOutput, PolicyStatus, PrecisionStatus, TokenChunk
from deployments.replica import ServedBy
from policies.registry import build_policy

logger = logging.getLogger("ray.serve")

MODE_HEADER = "x-nestedfp-mode"
REPLICA_HEADER = "x-nestedfp-replica"
OVERRIDE_MODES = ("fp16", "fp8", "auto")
REROUTES = 3  # a stream whose replica is gone before its first output is sent again, to the router's next pick
REROUTE_BACKOFF_S = 0.25  # times the attempt: the router learns of a dead replica from Serve's controller


def openai_error(status: int, message: str, type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": status}}, status_code=status)


async def rerouted_before_first_output(start: Callable[[], AsyncIterator[Any]], reroutes: int = REROUTES,
                                       backoff_s: float = REROUTE_BACKOFF_S) -> AsyncGenerator[Any, None]:
    """``start()``'s stream, started again if its replica died or went unavailable before the first output:
    the first item that is not a ``ServedBy``.

    Why: until the router hears that a replica died, it can still pick it, and a replica killed a moment
    before can still open the stream (its ``ServedBy``) and then drop it. Serve's default path routes such
    a request elsewhere; on Ray's throughput-optimized path (``deployments/fast_path.py``) the error reached
    the client as a 500. Until the first output, nothing has reached the client, so sending the request
    again loses nothing; the dead replica's ``ServedBy`` is dropped with it. Once an output is through, an
    error is the client's to see.
    """
    for attempt in range(reroutes + 1):
        stream = start()
        head: list[Any] = []  # the ServedBy items, then the first output
        try:
            async for item in stream:
                head.append(item)
                if not isinstance(item, ServedBy):
                    break  # leaves the stream open where it stands
        except RayActorError as e:
            if attempt == reroutes:
                raise
            logger.warning("replica gone before the first output (%s); sending the request again", e)
            await asyncio.sleep(backoff_s * (attempt + 1))
            continue
        for item in head:
            yield item
        async for item in stream:
            yield item
        return


def make_app() -> FastAPI:
    """Ray Serve LLM's FastAPI app, with request validation failures reported as OpenAI 400s."""
    app = init()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return openai_error(400, msgs or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 401: "authentication_error", 403: "permission_error"}.get(exc.status_code)
        return openai_error(exc.status_code, str(exc.detail), kind or "invalid_request_error")

    return app


ENDPOINTS = {
    **DEFAULT_ENDPOINTS,
    "get_precision": lambda app: app.get("/admin/precision"),
    "set_precision": lambda app: app.post("/admin/precision"),
    "get_policy": lambda app: app.get("/admin/policy"),
    "set_policy": lambda app: app.post("/admin/policy"),
    "metrics": lambda app: app.get("/metrics"),
}


class PrecisionIngress(OpenAiIngress):
    def __init__(
        self,
        llm_deployments: dict[str, DeploymentHandle],
        model_cards: dict,
        *,
        controller: DeploymentHandle,
        admin_token: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._controller = controller
        self._admin_token = admin_token
        self._model_id = next(iter(model_cards))

    # --- OpenAI routes: tag responses with the serving replica and its mode ---------------------

    async def _get_response(self, *, body, call_method, raw_request=None):
        start = functools.partial(super()._get_response, body=body, call_method=call_method, raw_request=raw_request)
        async for item in rerouted_before_first_output(start):
            if isinstance(item, ServedBy):
                if raw_request is not None:
                    raw_request.state.served_by = item
                continue
            yield item

    async def _tagged(self, call, body, request: Request) -> Response:
        try:
            resp = await call(body, request)
        except BackPressureError as e:
            return openai_error(503, f"overloaded, retry later: {e}", "server_overloaded")
        served = getattr(request.state, "served_by", None)
        if served is not None:
            resp.headers[MODE_HEADER] = served.mode
            resp.headers[REPLICA_HEADER] = served.replica_id
        return resp

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._tagged(super().completions, body, request)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._tagged(super().chat, body, request)

    # --- Admin -----------------------------------------------------------------------------------

    def _auth(self, request: Request) -> Optional[JSONResponse]:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            r = openai_error(401, "missing bearer token", "authentication_error")
            r.headers["www-authenticate"] = "Bearer"
            return r
        if not secrets.compare_digest(header[7:].strip(), self._admin_token):
            return openai_error(403, "invalid admin token", "permission_error")
        return None

    async def _admin_body(self, request: Request) -> dict[str, Any] | JSONResponse:
        """An authorized admin call's JSON object, or the 401/403/400 response to send instead."""
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return openai_error(400, "body must be JSON")
        return body if isinstance(body, dict) else openai_error(400, "body must be a JSON object")

    async def get_precision(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return JSONResponse(await self._controller.status.remote())

    async def set_precision(self, request: Request) -> Response:
        if isinstance(body := await self._admin_body(request), JSONResponse):
            return body
        if body.get("mode") not in OVERRIDE_MODES:
            return openai_error(400, f"'mode' must be one of {list(OVERRIDE_MODES)}")
        replica = body.get("replica")
        if replica is not None:
            known = (await self._controller.status.remote())["replicas"]
            if replica not in known:
                return openai_error(404, f"unknown replica {replica!r}; known: {sorted(known)}", "not_found_error")
        return JSONResponse(await self._controller.override.remote(body["mode"], replica))

    async def get_policy(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return JSONResponse(await self._controller.policy_status.remote())

    async def set_policy(self, request: Request) -> Response:
        """Swap the adaptive policy; answers with the GET /admin/precision body after the swap."""
        if isinstance(body := await self._admin_body(request), JSONResponse):
            return body
        if not isinstance(body.get("name"), str):
            return openai_error(400, "body must be {\"name\": policy name, \"params\": optional object}")
        if extra := sorted(set(body) - {"name", "params"}):
            return openai_error(400, f"unknown fields {extra}; expected 'name' and optional 'params'")
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            return openai_error(400, "'params' must be a JSON object")
        # Validate here, with the controller's own rules: a ValueError raised inside the controller
        # would reach us wrapped in a Ray error with its traceback as the message.
        try:
            build_policy(body["name"], params)
        except ValueError as e:
            return openai_error(400, str(e))
        return JSONResponse(await self._controller.set_policy.remote(body["name"], params))

    async def metrics(self) -> Response:
        text = await self._controller.metrics_text.remote()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # --- Typed Python API for DeploymentHandle callers --------------------------------------------

    def _request(self, req: CompletionInput, stream: bool) -> CompletionRequest:
        return CompletionRequest(
            model=self._model_id,
            prompt=req.prompt,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            stop=req.stop,
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )

    async def _stream(self, request: CompletionRequest) -> AsyncGenerator[Any, None]:
        served: Optional[ServedBy] = None
        handle = self._get_configured_serve_handle(self._model_id)
        async for item in rerouted_before_first_output(functools.partial(handle.completions.remote, request, None)):
            if isinstance(item, ServedBy):
                served = item
                continue
            for piece in item if isinstance(item, list) else [item]:
                if hasattr(piece, "error"):
                    raise ValueError(piece.error.message)
                yield served, piece

    async def complete(self, req: CompletionInput) -> CompletionOutput:
        """One completion, returned whole."""
        async for served, resp in self._stream(self._request(CompletionInput.model_validate(req), stream=False)):
            choice = resp.choices[0]
            return CompletionOutput(
                text=choice.text,
                finish_reason=choice.finish_reason,
                prompt_tokens=resp.usage.prompt_tokens,
                completion_tokens=resp.usage.completion_tokens,
                replica=served.replica_id,
                mode=served.mode,
            )
        raise RuntimeError("replica returned no response")

    async def complete_stream(self, req: CompletionInput) -> AsyncGenerator[TokenChunk, None]:
        """A completion as it is generated, one chunk per engine output (call with ``stream=True``)."""
        async for served, sse in self._stream(self._request(CompletionInput.model_validate(req), stream=True)):
            payload = sse.removeprefix("data: ").strip()
            if not payload or payload == "[DONE]":
                continue
            data = json.loads(payload)
            for choice in data.get("choices", []):
                yield TokenChunk(
                    text=choice.get("text", ""),
                    finish_reason=choice.get("finish_reason"),
                    replica=served.replica_id,
                    mode=served.mode,
                )

    async def precision(self) -> PrecisionStatus:
        """Every replica's mode as the controller sees it."""
        return PrecisionStatus.model_validate(await self._controller.status.remote())

    async def policy(self) -> PolicyStatus:
        """The adaptive policy in force, its parameters and the policies that could replace it."""
        return PolicyStatus.model_validate(await self._controller.policy_status.remote())
