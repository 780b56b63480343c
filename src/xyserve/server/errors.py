"""Client-facing errors: OpenAI's error body ``{"error": {message, type, param, code}}``.

Every client error is an :class:`APIError`, rendered with its status (400 by default; 401
without the API key, 404 for an unknown model, 413 for a body over the limit, 499 when the
client left, 503 past the waiting limit or once the engine has stopped, 504 past the request
time limit, 500 when the engine failed while the request was in flight), so OpenAI clients raise
their usual exceptions. FastAPI's 422 validation errors become 400s naming the field.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xyserve.server.async_engine import (
    EngineBusyError,
    EngineDeadError,
    EngineFailedError,
    RequestFailedError,
)
from xyserve.server.protocol import ErrorInfo, ErrorResponse
from xyserve.server.request_stream import RequestTimeoutError


class APIError(Exception):
    """An error that the client caused (or may retry), rendered as OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.info = (
            status,
            ErrorInfo(message=message, type=type, param=param, code=code),
        )
        self.headers = headers


def field_error(
    e: Exception,
    renames: dict[str, str] | None = None,
    param: str | None = None,
    code: str | None = None,
) -> APIError:
    """The 400 for a check that failed on a field under the engine's name for it (``e.param``,
    else ``param``), named as the request sent it: ``renames`` maps the engine's name to the
    request's (chat's ``max_completion_tokens`` sets ``max_tokens``, ``top_logprobs`` sets
    ``logprobs``), in ``param`` and where the message opens with the name, so that the client
    is told of a field it sent."""
    msg = str(e)
    name = getattr(e, "param", None) or param
    sent = (renames or {}).get(name, name)
    if sent != name and msg.startswith(f"{name}:"):
        msg = f"{sent}{msg[len(name) :]}"
    return APIError(msg, param=sent, code=code)


def admission_error(
    e: Exception, renames: dict[str, str] | None = None, param: str | None = None
) -> APIError:
    """The 400 for a request the engine's intake refused (``field_error``), with OpenAI's
    code ``context_length_exceeded`` where it is refused for the model's context length."""
    code = "context_length_exceeded" if "context length" in str(e) else None
    return field_error(e, renames, param=param, code=code)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=err.info).model_dump(), status_code=err.status, headers=err.headers
    )


def stream_error(e: BaseException) -> APIError:
    """The error a request's stream raised, as the client should see it."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, RequestTimeoutError):
        return APIError(str(e), 504, "timeout_error", code="request_timeout")
    if isinstance(e, RequestFailedError):
        return APIError(f"the request failed: {e}", 500, "internal_error")
    if isinstance(e, EngineBusyError):
        return APIError(str(e), 503, "server_busy", headers={"Retry-After": "1"})
    if isinstance(e, EngineFailedError):  # it was in flight when the engine thread died
        return APIError(str(e), 500, "internal_error")
    if isinstance(e, EngineDeadError):  # stopped before it was taken: unavailable
        return APIError(str(e), 503, "internal_error")
    return APIError(f"internal error: {e}", 500, "internal_error")


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending field as ``param``."""
    msgs, param = [], None
    for e in exc.errors():
        # Union branches add type tags ("str", "list[int]") to the location: not fields.
        loc = [str(x) for x in e.get("loc", ()) if x != "body" and not _is_type_tag(x)]
        if e.get("type") == "json_invalid":
            loc = []
        where = ".".join(loc)
        if param is None and where:
            param = where
        msg = f"{where}: {e.get('msg')}" if where else str(e.get("msg"))
        if msg not in msgs:
            msgs.append(msg)
    return APIError("; ".join(msgs) or "invalid request", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "tuple"}


def _is_type_tag(x: object) -> bool:
    return isinstance(x, str) and ("[" in x or x in _TYPE_TAGS)


def install_error_handlers(app: FastAPI) -> None:
    """Render APIError, request validation errors and HTTP errors (404, 405) as OpenAI's body."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return error_response(APIError(str(exc.detail), exc.status_code, kind))
