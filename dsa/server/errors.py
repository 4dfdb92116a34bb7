"""Errors as the OpenAI API sends them: an HTTP status and `{"error": {"message", "type", "param", "code"}}`.

    raise APIError(400, "temperature must be ...", param="temperature")
    raise from_dsa_error(err)                  # InputError 400, QueueFullError 503 (+ Retry-After), ...
    install(app)                               # every error of the app in this shape, 404 / 405 included

| status | type | when |
|---|---|---|
| 400 | invalid_request_error | malformed JSON, a wrong type, a bad value, an unknown model, a prompt too long |
| 401 | invalid_request_error (code invalid_api_key) | --api-key set and no / another `Authorization: Bearer` |
| 404 / 405 | invalid_request_error | no such route / the route takes another method |
| 500 | server_error | the engine failed |
| 503 | server_error (+ Retry-After) | the queue is full, the model is still loading, the server is shutting down |
"""
from __future__ import annotations

import logging
from typing import Optional

from dsa.engine.async_engine import EngineDeadError, QueueFullError, ShuttingDownError
from dsa.errors import DsaError, InputError, TokenizerError

log = logging.getLogger("dsa.server")

RETRY_AFTER_SECONDS = 1  # what a 503 asks the client to wait


class APIError(Exception):
    """One failed request: raised anywhere in a handler, answered by `install`'s handler."""

    def __init__(self, status: int, message: str, *, type: Optional[str] = None, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def from_dsa_error(err: DsaError, param: Optional[str] = None) -> APIError:
    """The HTTP answer to an error of the engine layer."""
    if isinstance(err, QueueFullError):
        return unavailable(str(err), "queue_full")
    if isinstance(err, ShuttingDownError):
        return unavailable(str(err), "shutting_down")
    if isinstance(err, EngineDeadError):
        return APIError(500, str(err), code="engine_failed")
    if isinstance(err, (InputError, TokenizerError)):
        return bad_request(str(err), param)
    return APIError(500, str(err), code="internal_error")


def install(app) -> None:
    """Answer APIError, routing errors (404 / 405), FastAPI's validation errors (422 -> 400) and anything
    unexpected (500) in the OpenAI shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def api_error(request, exc: APIError):
        return exc.response()

    async def http_error(request, exc: HTTPException):
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            err = APIError(404, f"no route {where}; the routes are POST /v1/completions, POST /v1/chat/completions, "
                           "GET /v1/models, GET /health, GET /metrics", code="not_found")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            err = APIError(405, f"method {request.method} is not allowed on {request.url.path}"
                           + (f"; use {allowed}" if allowed else ""), code="method_not_allowed")
        else:
            err = APIError(exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return err.response()

    async def validation_error(request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        return bad_request(f"{'.'.join(loc) or 'the request'}: {first.get('msg', 'invalid')}",
                           ".".join(loc) or None).response()

    async def unexpected(request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


__all__ = ["APIError", "bad_request", "unavailable", "from_dsa_error", "install", "RETRY_AFTER_SECONDS"]
