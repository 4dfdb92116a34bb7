"""Server-sent events as the OpenAI API streams them: `data: {json}\\n\\n` per chunk, then `data: [DONE]\\n\\n`.

    return event_stream(chunks, on_close)   # chunks: an async iterator of dicts; a StreamingResponse

An error after the response has started (the engine failing mid-stream) becomes one last event
`data: {"error": {...}}` before `[DONE]`. However the response ends (a client that disconnects, even before
the first byte, included), the iterator is closed and `on_close()` awaited: that aborts the engine requests
behind it.
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Awaitable, Callable

from dsa.errors import DsaError
from dsa.server.errors import APIError, from_dsa_error

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


async def _frames(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield event(chunk)
    except (APIError, DsaError) as err:
        yield event((err if isinstance(err, APIError) else from_dsa_error(err)).body())
    finally:
        await chunks.aclose()
    yield DONE


def event_stream(chunks: AsyncIterator[dict], on_close: Callable[[], Awaitable[None]]):
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    frames = _frames(chunks)

    async def cleanup() -> None:  # a background task runs however the response ended (a disconnect too)
        try:
            await frames.aclose()
        finally:
            await on_close()

    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS,
                             background=BackgroundTask(cleanup))


__all__ = ["event", "event_stream", "DONE"]
