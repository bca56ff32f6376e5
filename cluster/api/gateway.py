"""The FastAPI app of the gateway: routes, auth, SSE. Ray Serve hosts it; tests run it in-process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types import Model
from sse_starlette import EventSourceResponse

from cluster.api.auth import Identity, KeyRing, QuotaHold, Quotas
from cluster.api.chat import ChatService
from cluster.api.completions import CompletionService
from cluster.api.engine_client import EngineClient
from cluster.api.errors import OpenAIError, install_error_handlers
from cluster.api.generation import Caller, RequestRecord, Stream
from cluster.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponsesRequest,
    SamplingRequest,
)
from cluster.api.response_store import InMemoryStore, ResponseStore
from cluster.api.responses import ResponsesService
from cluster.api.size_limits import BodySizeLimit, HeaderSizeLimit
from cluster.config import ClusterConfig
from cluster.contracts import Outcome
from cluster.harmony import Harmony

logger = logging.getLogger(__name__)


async def _sse(events: AsyncIterator, done_marker: bool = True) -> AsyncIterator:
    """OpenAI's stream framing: `data: <json>` per chunk, an error event if the engine fails
    mid-stream (headers are already sent), then `data: [DONE]`."""
    try:
        async with aclosing(events):  # a client that leaves closes the whole chain at once
            async for event in events:
                yield event
    except OpenAIError as err:
        yield JSONResponse(err.body()).body.decode()
    except Exception:
        logger.exception("stream failed")
        error = OpenAIError(500, "the engine failed while streaming", code="engine_error")
        yield JSONResponse(error.body()).body.decode()
    if done_marker:
        yield "[DONE]"


class _SSE(EventSourceResponse):
    """The SSE response of a stream, which frees the request's engine work and seat however the
    response ends: finished, failed, or cancelled before it wrote anything (the generators then
    never start, so their own clean-up cannot run)."""

    def __init__(self, stream: Stream, headers: dict[str, str]) -> None:
        super().__init__(
            _sse(stream.events, stream.done_marker), sep="\n", ping=15, headers=headers
        )
        self._close = stream.close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()


def create_app(
    config: ClusterConfig,
    harmony: Harmony,
    engine: EngineClient,
    on_done: Callable[[RequestRecord], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    quotas: Quotas | None = None,
    background: Callable[[], Awaitable[None]] | None = None,
    store: ResponseStore | None = None,
) -> FastAPI:
    """`on_done` hears what happened to every request (the gateway's metrics); `quotas` are
    the keys' limits (shared by `background`, which runs for the app's life)."""
    chat = ChatService(config, harmony, engine)
    completions = CompletionService(config, harmony, engine)
    responses = ResponsesService(
        config, harmony, engine, store or InMemoryStore(config.responses.ttl_s)
    )
    ring, quotas = KeyRing(config.auth.named_keys()), quotas or Quotas()
    if ring.open:
        logger.warning(
            "auth: OPEN mode, no API keys configured: every request is accepted. "
            "Set auth.api_keys for anything but local use."
        )
    created = int(time.time())

    def authorize(request: Request) -> Identity | None:
        """The API key in `Authorization: Bearer`, by name (never by its material)."""
        if ring.open:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(
                401,
                "You didn't provide an API key: send `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        identity = ring.identify(token.strip())
        if identity is None:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if identity.revoked:
            raise OpenAIError(
                403, f"The API key {identity.name} has been revoked.", code="api_key_revoked"
            )
        return identity

    hooks = (on_done,) if on_done is not None else ()

    async def call(service, body: SamplingRequest, identity: Identity | None):
        """Run one request within its key's quota: the slots are held until its choices end."""
        choices = body.n  # each choice is a request's work, and counts as one
        if choices > config.gateway.max_choices:
            raise OpenAIError(
                400,
                f"n is {choices}, above the limit of {config.gateway.max_choices}",
                param="n",
            )
        if identity is None:  # open mode: fairness by the request's `user` field
            return await service.create(body, Caller(body.user or "anonymous", None, hooks))
        refusal = quotas.acquire(identity, clock(), choices)
        if refusal is not None:
            effort = getattr(body, "reasoning_effort", None) or config.default_effort
            now = time.time()
            for hook in hooks:
                hook(
                    RequestRecord(service.endpoint, effort, identity.name, Outcome.QUOTA, now, now)
                )
            raise OpenAIError(
                429,
                f"Rate limit reached for API key {identity.name}: {refusal.message}.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(refusal.retry_after_s)},
            )
        hold = QuotaHold(quotas, identity.name, clock, held=choices)
        try:
            return await service.create(body, Caller(identity.name, identity.name, (hold, *hooks)))
        except BaseException:
            hold()  # failed before its generation began (a bad request): nothing used
            raise

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        task = asyncio.create_task(background()) if background else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(
        title="gpt-oss-cluster", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.gateway.max_request_body_bytes)
    app.add_middleware(HeaderSizeLimit, max_bytes=config.gateway.max_header_bytes)
    v1 = [Depends(authorize)]

    def stream_or_json(reply):
        result, headers = reply
        if isinstance(result, Stream):
            return _SSE(result, headers)
        if isinstance(result, dict):  # a Responses object, already JSON-shaped
            return JSONResponse(result, headers=headers)
        return JSONResponse(result.model_dump(exclude_none=True), headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest, identity: Identity | None = Depends(authorize)
    ):
        return stream_or_json(await call(chat, body, identity))

    @app.post("/v1/completions")
    async def text_completions(
        body: CompletionRequest, identity: Identity | None = Depends(authorize)
    ):
        return stream_or_json(await call(completions, body, identity))

    @app.post("/v1/responses")
    async def create_response(
        body: ResponsesRequest, identity: Identity | None = Depends(authorize)
    ):
        return stream_or_json(await call(responses, body, identity))

    @app.get("/v1/responses/{response_id}", dependencies=v1)
    async def retrieve_response(response_id: str):
        return JSONResponse(await responses.retrieve(response_id))

    @app.delete("/v1/responses/{response_id}", dependencies=v1)
    async def delete_response(response_id: str):
        return JSONResponse(await responses.delete(response_id))

    @app.get("/v1/models", dependencies=v1)
    async def models():
        model = Model(
            id=config.model.served_name, object="model", created=created, owned_by="gpt-oss-cluster"
        )
        return {"object": "list", "data": [model.model_dump() | {"root": config.model.name}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if await engine.ready():
            return {"status": "ready"}
        return OpenAIError(503, "no engine replica is ready", code="not_ready").response()

    return app
