"""Server-sent events as the OpenAI API streams them: `data: {json}\\n\\n` per chunk, then `data: [DONE]\\n\\n`.

    return event_stream(chunks)       # chunks: an async iterator of dicts; a StreamingResponse

An error after the response has started (the engine failing mid-stream) becomes one last event
`data: {"error": {...}}` before `[DONE]`. The iterator is closed however the response ends (a client that
disconnects included), which aborts the engine requests behind it.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

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


def event_stream(chunks: AsyncIterator[dict]):
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    frames = _frames(chunks)
    # background: runs however the response ended (also after a disconnect cancelled the stream)
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS,
                             background=BackgroundTask(frames.aclose))


__all__ = ["event", "event_stream", "DONE"]
