"""The HTTP app: OpenAI's endpoints over the engine, sessions, health and metrics.

`build_app(server)` returns a FastAPI app whose lifespan starts and stops the engine thread.
Every error, the framework's own included (a malformed body, an unknown route), has OpenAI's
shape `{"error": {"message", "type", "param", "code"}}`. Streaming is SSE: `data: {json}`
chunks with one id, then `data: [DONE]`. A client that goes away (seen while waiting for the
next event, or when a chunk cannot be sent) cancels its job: its rows leave the batch and its
session keeps the state it had.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Done, Event, Failed, Finished, Job, Piece
from .errors import ServeError, error_body
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseShape,
    SessionCreate,
    _GenerationRequest,
)
from .server import Server

DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def build_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="ttt-bringup serve_stage", lifespan=lifespan)
    _install_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unknown")
        server.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response

    @app.get("/health")
    def health() -> JSONResponse:
        alive = server.engine.alive
        body = {"status": "ok" if alive else "engine stopped", "model": server.name,
                "pid": os.getpid()}  # fmt: skip
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str) -> dict[str, Any]:
        server.check_model(model_id)
        return server.model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        server.check_model(body.model)
        if isinstance(body.prompt, str):
            ids = server.encode(body.prompt, fresh=server.fresh(body.session_id))
        else:
            ids = body.prompt
        return await _answer(server, request, body, ids, chat=False, extra_stop=())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        server.check_model(body.model)
        fresh = server.fresh(body.session_id)
        messages = [m.model_dump() for m in body.messages]
        text = server.template.render(messages, continuation=not fresh)
        ids = server.encode(text, fresh=fresh)
        return await _answer(server, request, body, ids, chat=True,
                             extra_stop=server.template.stop)  # fmt: skip

    @app.post("/v1/sessions", status_code=201)
    def create_session(body: SessionCreate | None = None) -> dict[str, Any]:
        return server.store.create(body.session_id if body else None).as_json()

    @app.get("/v1/sessions/{session_id}")
    def get_session(session_id: str) -> dict[str, Any]:
        info = server.store.info(session_id).as_json()
        return {**info, "busy": server.engine.is_busy(session_id)}

    @app.delete("/v1/sessions/{session_id}")
    def delete_session(session_id: str) -> dict[str, Any]:
        server.engine.delete_session(session_id)
        return {"id": session_id, "object": "session", "deleted": True}

    @app.get("/metrics")
    def metrics() -> Response:
        text = server.metrics.render(server.store.totals())
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app


async def _answer(
    server: Server,
    request: Request,
    body: _GenerationRequest,
    ids: list[int],
    *,
    chat: bool,
    extra_stop: tuple[str, ...],
) -> Response:
    """Submit one job and answer with its whole outcome or its SSE stream."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:  # on the engine thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    job = Job(ids, body.sampling(extra_stop), sink, session_id=body.session_id)
    server.engine.submit(job)
    shape = ResponseShape(chat, server.name, body.session_id, body.return_token_ids)
    if body.stream:
        stream = _stream(job, events, request, shape, body.include_usage)
        return StreamingResponse(stream, media_type="text/event-stream")
    try:
        while True:
            event = await _next_event(job, events, request)
            if isinstance(event, Done):
                return JSONResponse(shape.full(event.outcome))
            if isinstance(event, Failed):
                raise event.error
    except ClientGone:
        return Response(status_code=499)  # nobody reads it


async def _next_event(job: Job, events: asyncio.Queue[Event], request: Request) -> Event:
    """The job's next event; cancels the job and raises ClientGone when the client has left."""
    try:
        while True:
            try:
                return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise ClientGone() from None
    except asyncio.CancelledError:
        job.cancel()
        raise


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(
    job: Job,
    events: asyncio.Queue[Event],
    request: Request,
    shape: ResponseShape,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE chunks of one job. Chat: a first chunk per choice carries the role."""
    finished = False
    try:
        if shape.chat:
            for choice in job.choices:
                yield _sse(shape.chunk(choice.index, "", first=True,
                                       with_usage_field=include_usage))  # fmt: skip
        while True:
            event = await _next_event(job, events, request)
            if isinstance(event, Piece):
                if event.text or shape.token_ids:
                    yield _sse(shape.chunk(event.index, event.text, token_ids=event.token_ids,
                                           with_usage_field=include_usage))  # fmt: skip
            elif isinstance(event, Finished):
                yield _sse(shape.chunk(event.index, None, finish_reason=event.reason,
                                       with_usage_field=include_usage))  # fmt: skip
            elif isinstance(event, Done):
                finished = True
                if include_usage:
                    yield _sse(shape.usage_chunk(event.outcome))
                yield _sse("[DONE]")
                return
            elif isinstance(event, Failed):
                finished = True
                yield _sse(event.error.body())
                return
    except ClientGone:
        return
    finally:
        if not finished:
            job.cancel()


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(_: Request, error: ServeError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"malformed JSON: {first.get('msg')}", None
        else:
            param = loc[0] if loc else None
            cause = first.get("ctx", {}).get("error")
            detail = str(cause) if cause is not None else first.get("msg", "invalid value")
            where = ".".join(loc)
            message = (
                detail if detail.startswith(f"{param}:") or not where else f"{where}: {detail}"
            )
        return JSONResponse(error_body(400, message, param=param), status_code=400)

    @app.exception_handler(Exception)
    async def bug(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, f"internal error: {type(error).__name__}: {error}"),
                            status_code=500)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(error.status_code, str(error.detail)),
                            status_code=error.status_code)  # fmt: skip
