"""The FastAPI app of `dsa serve`: the OpenAI-compatible routes over an EngineHost.

    app = create_app(host, api_key="...", loader=build)   # loader: started at startup, after the port is bound

    POST /v1/completions        prompt: text | [text] | [ids] | [[ids]]   (stream, n, logprobs, stop, ...)
    POST /v1/chat/completions   messages, through the model's chat template
    GET  /v1/models             the served model (id, max_model_len)
    GET  /health                200 when serving; 503 while loading or shutting down; 500 when failed
    GET  /metrics               Prometheus text (dsa_* names, dsa.server.metrics)

With an API key, every /v1 route needs `Authorization: Bearer KEY` (401 otherwise); /health and /metrics
never do. The lifespan's end drains the engine (EngineHost.stopped).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dsa.server import errors, prompts, sse
from dsa.server.engine import EngineHost
from dsa.server.errors import APIError, bad_request
from dsa.server.generate import ChoiceRun, close_all, collect_all, merged, open_all
from dsa.server.protocol import GenerationRequest, parse_request
from dsa.server.responses import Responses, new_request_id, usage


def create_app(host: EngineHost, *, api_key: Optional[str] = None,
               loader: Optional[Callable[[], Any]] = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        if loader is not None:
            host.load_in_background(loader)
        yield
        await host.stopped()

    app = FastAPI(title="dsa", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            what = "no API key was given" if not given else "the API key is not the server's"
            raise APIError(401, f"{what}; send the header `Authorization: Bearer KEY` with the server's --api-key",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": host.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "dsa", "root": host.model_name, "parent": None,
                                            "max_model_len": host.max_model_len}]}

    @v1.post("/completions")
    async def completions(request: Request):
        return await _generate(request, host, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, host, chat=True)

    app.include_router(v1)

    @app.get("/health")
    async def health():
        status, body = host.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics():
        text, content_type = host.metrics.render()
        return Response(text, media_type=content_type)

    return app


async def read_json(request: Request) -> Any:
    """The body as JSON (400 for bytes that are not: not UTF-8, not JSON, NaN / Infinity)."""
    raw = await request.body()

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None


async def _generate(request: Request, host: EngineHost, chat: bool):
    arrival = time.monotonic()
    req = parse_request(await read_json(request), chat)
    if req.model is not None and req.model != host.model_name:
        raise bad_request(f"model {req.model!r} is not served here; this server serves {host.model_name!r} "
                          "(GET /v1/models)", "model", "model_not_found")
    ids_list = prompts.request_prompts(req, host.tokenizer, host.vocab_size)
    for ids in ids_list:
        prompts.check_context(req, ids, host.max_model_len)
    engine = host.engine_for_request()
    api_id = new_request_id(chat)
    runs = [ChoiceRun(p * req.n + j, engine, ids, req.sampling_params(j, len(ids), host.max_model_len),
                      f"{api_id}-{p * req.n + j}", host, stop=req.stop, logprobs=req.logprobs is not None,
                      arrival=arrival)
            for p, ids in enumerate(ids_list) for j in range(req.n)]
    await open_all(runs)
    out = Responses(chat=chat, request_id=api_id, model=host.model_name, logprobs=req.logprobs is not None,
                    include_usage=req.include_usage)
    prompt_tokens = sum(len(ids) for ids in ids_list)
    if req.stream:
        return sse.event_stream(_chunks(req, runs, out, prompt_tokens), lambda: close_all(runs))
    try:
        results = await _unless_disconnected(request, collect_all(runs))
    finally:
        await close_all(runs)
    use = usage(prompt_tokens, sum(r.num_output_tokens for r in results))
    return JSONResponse(out.full(sorted(results, key=lambda r: r.index), use))


async def _chunks(req: GenerationRequest, runs: list[ChoiceRun], out: Responses,
                  prompt_tokens: int) -> AsyncIterator[dict]:
    if req.chat:
        for run in runs:
            yield out.role_chunk(run.index)
    async for delta in merged(runs):
        yield out.chunk(delta)
    if req.include_usage:
        yield out.usage_chunk(usage(prompt_tokens, sum(r.num_output_tokens for r in runs)))


async def _unless_disconnected(request: Request, work):
    """Await `work`; if the client disconnects first, cancel it (which aborts its engine requests)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise APIError(499, "the client disconnected", code="client_closed")
    return task.result()


__all__ = ["create_app", "read_json"]
