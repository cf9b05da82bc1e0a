"""The FastAPI application of ``dlm serve``: OpenAI's completions and chat completions, streaming, errors.

    app = create_app(dlm.Engine.load("runs/tiny"), model_id="tiny")      then: uvicorn.run(app)

Every error is OpenAI's error JSON ``{"error": {"message", "type", "param", "code"}}``: 4xx for what the client
can fix (400 a bad field, 401 a wrong API key, 404 an unknown model or path, 408 the per-request timeout, 413 a
body over the limit), 503 with Retry-After when the queue is full. A streamed response sends ``data:`` chunks of
OpenAI's schema (the denoising canvas rides in an extra ``dlm`` field of chunks with empty text, which the openai
client ignores) and ends with ``data: [DONE]``; an error after the stream began is one ``data: {"error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from dlm.errors import DlmError
from dlm.samplers import user_fields
from dlm.serve.batcher import Batcher, Ticket
from dlm.serve.requests import ApiError, Job, Limits, parse
from dlm.serve.verbs import parse_task

log = logging.getLogger("dlm.serve")
OBJECT = {"completion": "text_completion", "chat": "chat.completion"}
CHUNK = {"completion": "text_completion", "chat": "chat.completion.chunk"}
PREFIX = {"completion": "cmpl-", "chat": "chatcmpl-"}


def create_app(
    engine,
    *,
    model_id: str,
    limits: Limits = Limits(),
    max_batch: int = 16,
    max_queue: int = 64,
    timeout: float = 300.0,
    api_key: str | None = None,
    max_body: int = 1 << 20,
    window: float = 0.01,
) -> FastAPI:
    """The app serving ``engine`` as ``model_id`` (its batching worker starts and stops with the app)."""
    batcher = Batcher(engine, max_batch=max_batch, max_queue=max_queue, window=window)
    limits = Limits(limits.max_tokens, min(limits.rows, max_batch), limits.default_max_tokens)
    started = int(time.time())
    playground = files("dlm.serve").joinpath("static/playground.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="dlm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        log.info("%s %s %d %s", request.method, request.url.path, e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        if e.status_code == 404:
            message += (
                "; this server has GET / (the playground), POST /v1/completions, POST /v1/chat/completions, "
                "POST /v1/dlm/infill, POST /v1/dlm/edit, GET /v1/models, GET /health"
            )
        return await api_error(request, ApiError(message, status=e.status_code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(ApiError("internal server error", status=500, type="server_error").body(), 500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(
                "missing or wrong API key: send the header Authorization: Bearer <key>",
                status=401,
                code="invalid_api_key",
            )

    async def json_body(request: Request):
        length = request.headers.get("content-length")
        too_big = ApiError(f"the request body is over the server's limit of {max_body} bytes", status=413)
        if length is not None and length.isdigit() and int(length) > max_body:
            raise too_big
        data = b""
        async for piece in request.stream():
            data += piece
            if len(data) > max_body:
                raise too_big
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON: {e}") from None

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """The web playground (static; its API calls carry the key the user types in)."""
        return HTMLResponse(playground, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **batcher.health()}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        name, config = engine.sampler_config()
        defaults = {"sampler": name, **{f: getattr(config, f) for f in user_fields(type(config))}}
        card = {"id": model_id, "object": "model", "created": started, "owned_by": "dlm"}
        card["dlm"] = {
            "objective": engine.config.train.objective,
            "samplers": list(engine.samplers),
            "context": engine.config.model.max_seq_len,
            "defaults": defaults,
            "sampler_defaults": sampler_defaults(engine),
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat")

    @app.post("/v1/dlm/infill")
    async def infill(request: Request):
        return await task(request, "infill")

    @app.post("/v1/dlm/edit")
    async def edit(request: Request):
        return await task(request, "edit")

    async def task(request: Request, kind: str):
        """An infill or edit: queued like a completion, answered with its result (no streaming)."""
        authorize(request)
        job = parse_task(kind, await json_body(request), engine, model_id, limits)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        ticket = batcher.submit(job, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), timeout)
        event = await finished(request, ticket, events)
        if not isinstance(event, dict):
            return event  # the client left
        result = dict(event["result"])
        tokens, nfe, seconds = result.pop("completion_tokens"), result.pop("nfe"), result.pop("seconds")
        logline(request, ticket, 200, f"tokens={tokens} nfe={nfe}")
        body = {"id": f"{kind}-{ticket.id}", "object": f"dlm.{kind}", "created": int(time.time())}
        body.update(model=model_id, **result, usage={"completion_tokens": tokens})
        body["dlm"] = {**job.settings(), "nfe": nfe, "seconds": round(seconds, 4), "batch_rows": 1}
        return body

    async def finished(request: Request, ticket: Ticket, events: asyncio.Queue):
        """The ticket's "done" event, or a 499 response once the client has hung up (checked every 0.5 s); an
        "error" event is raised. The ticket is cancelled either way, so its rows leave the batch."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        logline(request, ticket, 499, "client disconnected")
                        return JSONResponse({}, 499)
                    continue
                if event["type"] == "error":
                    raise event["error"]
                if event["type"] == "done":
                    return event
        finally:
            batcher.cancel(ticket)

    async def generate(request: Request, kind: str):
        authorize(request)
        job = parse(kind, await json_body(request), engine, model_id, limits)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        ticket = batcher.submit(job, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), timeout)
        if job.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                stream(request, kind, ticket, events), media_type="text/event-stream", headers=headers
            )
        event = await finished(request, ticket, events)
        if not isinstance(event, dict):
            return event  # the client left
        logline(request, ticket, 200, event=event)
        return response(kind, ticket, event)

    def response(kind: str, ticket: Ticket, done: dict) -> dict:
        job = ticket.job
        choices = []
        for choice in done["choices"]:
            text = choice["text"]
            if job.echo:
                text = job.prompt_texts[choice["index"] // job.n] + text
            body = {"index": choice["index"], "logprobs": None, "finish_reason": choice["finish_reason"]}
            body.update({"text": text} if kind == "completion" else {"message": {"role": "assistant", "content": text}})
            choices.append(body)
        return {
            "id": PREFIX[kind] + ticket.id,
            "object": OBJECT[kind],
            "created": int(time.time()),
            "model": model_id,
            "choices": choices,
            "usage": usage(job, done),
            "dlm": extension(job, done),
        }

    async def stream(request: Request, kind: str, ticket: Ticket, events: asyncio.Queue):
        job, created = ticket.job, int(time.time())

        def chunk(index: int, text: str | None = None, finish: str | None = None, extra: dict | None = None, **kw):
            choice = {"index": index, "logprobs": None, "finish_reason": finish}
            if kind == "completion":
                choice["text"] = text or ""
            else:
                choice["delta"] = kw.get("delta", {} if text is None else {"content": text})
            data = {"id": PREFIX[kind] + ticket.id, "object": CHUNK[kind], "created": created, "model": model_id}
            data["choices"] = [choice]
            if extra is not None:
                data["dlm"] = extra
            return f"data: {json.dumps(data)}\n\n"

        status, done = 200, None
        try:
            for c in range(job.rows):
                if kind == "chat":
                    yield chunk(c, delta={"role": "assistant", "content": ""})
                elif job.echo:
                    yield chunk(c, job.prompt_texts[c // job.n])
            while True:
                event = await events.get()
                if event["type"] == "text":
                    yield chunk(event["index"], event["text"])
                elif event["type"] == "denoising":
                    yield chunk(event["index"], extra={"denoising": event["data"]})
                elif event["type"] == "error":
                    status = event["error"].status
                    yield f"data: {json.dumps(event['error'].body())}\n\n"
                    break
                else:
                    done = event
                    for choice in event["choices"]:
                        yield chunk(choice["index"], finish=choice["finish_reason"], extra=extension(job, event))
                    if job.include_usage:
                        data = {"id": PREFIX[kind] + ticket.id, "object": CHUNK[kind], "created": created}
                        data.update(model=model_id, choices=[], usage=usage(job, event))
                        yield f"data: {json.dumps(data)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499  # the client left
            raise
        finally:
            batcher.cancel(ticket)
            logline(request, ticket, status, event=done)

    return app


def sampler_defaults(engine) -> dict:
    """Each sampler of the model -> its options with their defaults (what the playground offers)."""
    out = {}
    for sampler in engine.samplers:
        try:
            _, config = engine.sampler_config(sampler)
        except DlmError:  # a sampler that needs an option to be given has no defaults to show
            continue
        out[sampler] = {f: getattr(config, f) for f in user_fields(type(config))}
    return out


def usage(job: Job, done: dict) -> dict:
    prompt = sum(len(p) for p in job.prompts)
    completion = sum(c["completion_tokens"] for c in done["choices"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extension(job: Job, done: dict) -> dict:
    """The response's ``dlm`` object: the settings it ran with, its model calls, wall time and batch size."""
    return {**job.settings(), "nfe": done["nfe"], "seconds": round(done["seconds"], 4), "batch_rows": done["rows"]}


def logline(request: Request, ticket: Ticket, status: int, note: str = "", event: dict | None = None) -> None:
    """One line per request: what was asked, what came back, and how long it took."""
    job = ticket.job
    took = time.monotonic() - (ticket.deadline - ticket.timeout)
    facts = f"id={ticket.id} sampler={job.sampler} rows={job.rows} max_tokens={job.max_tokens} seed={job.seed}"
    if event is not None:
        finish = ",".join(c["finish_reason"] for c in event["choices"])
        facts += f" tokens={usage(job, event)['completion_tokens']} finish={finish} nfe={event['nfe']}"
        facts += f" batch={event['rows']}"
    log.info("%s %s %d %s%s %.2fs", request.method, request.url.path, status, facts, f" {note}" if note else "", took)
