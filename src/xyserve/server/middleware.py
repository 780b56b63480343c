"""ASGI middlewares: request-body limit, API key, and a last-resort 500 that keeps the
connection open. Pure ASGI (no BaseHTTPMiddleware), so streaming responses pass untouched."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

log = logging.getLogger("xyserve.server")

Scope = dict[str, Any]


def _error_body(message: str, type_: str, code: str | None = None) -> bytes:
    err = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": err}).encode()


async def send_json_error(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": body})


# A refused body up to this size is read (and dropped) before the 413 goes out: closing a
# connection with unread bytes in its receive buffer makes the kernel reset it, and the client,
# still sending, then sees "connection reset" instead of the 413. A larger body is answered
# at once (its sender gets the reset).
DRAIN_BYTES = 1 << 20


async def _drain(receive: Any, limit: int) -> None:
    """Read and drop the rest of the request body, up to ``limit`` bytes."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return
        seen += len(msg.get("body", b""))


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with a 413: at once when Content-Length says so, else
    as soon as the streamed body passes the limit (nothing beyond it is buffered); the rest of
    a body up to ``DRAIN_BYTES`` is read and dropped first, so that the 413 reaches the client.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = _error_body(
            f"the request body exceeds {self.max_bytes} bytes", "invalid_request_error"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_big = length is not None and int(length) > self.max_bytes
        except ValueError:
            too_big = False
        if too_big:
            if int(length) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            return await send_json_error(send, 413, body, [(b"connection", b"close")])
        seen = 0
        started = refused = False

        async def limited_receive() -> dict:
            # Past the limit: answer 413 here, and tell the app the client left (it stops
            # reading; what it sends after is dropped).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    if msg.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    if not started:
                        await send_json_error(send, 413, body, [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return msg

        async def tracked_send(msg: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not refused:
                raise


class ApiKeyMiddleware:
    """``Authorization: Bearer KEY`` on every route except the open ones: the probes a load
    balancer or orchestrator calls without credentials (vLLM leaves these open too)."""

    OPEN = ("/health", "/ping", "/version", "/metrics")

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        got = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(got, self.key):
            body = _error_body(
                "invalid or missing API key", "invalid_request_error", "invalid_api_key"
            )
            return await send_json_error(send, 401, body, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class InternalErrorMiddleware:
    """An unexpected exception becomes an OpenAI-shaped 500 *response*; Starlette's own
    handler re-raises after responding, and the server then drops the keep-alive connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(msg: dict) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as e:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await send_json_error(send, 500, _error_body(f"internal error: {e}", "internal_error"))
