"""ASGI middlewares that refuse oversized requests with OpenAI-shaped errors before reading them."""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.api.errors import OpenAIError


class BodySizeLimit:
    """ASGI middleware: an OpenAI-shaped 413 before an oversized body is read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds {self.max_bytes} bytes"
        length = dict(scope.get("headers", ())).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await OpenAIError(413, message, code="request_too_large").response()(
                scope, receive, send
            )
            return
        seen = 0

        async def limited_receive() -> Message:
            # Chunked bodies carry no length: count as they arrive; FastAPI hands the
            # HTTPException to the 413 handler above.
            nonlocal seen
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, message)
            return received

        await self.app(scope, limited_receive, send)


class HeaderSizeLimit:
    """ASGI middleware: an OpenAI-shaped 431 for oversized request headers (below the HTTP
    server's own hard limit, which answers in plain text)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if size > self.max_bytes:
                message = f"request headers take {size} bytes, above the limit of {self.max_bytes}"
                error = OpenAIError(431, message, code="headers_too_large")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
