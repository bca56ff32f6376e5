"""The FastAPI app of the gateway: routes, auth, SSE. Ray Serve hosts it; tests run it in-process."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types import Model
from sse_starlette import EventSourceResponse

from cluster.api.chat import ChatService
from cluster.api.completions import CompletionService
from cluster.api.errors import BodySizeLimit, OpenAIError, install_error_handlers
from cluster.api.generation import EngineClient, RequestRecord
from cluster.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from cluster.config import ClusterConfig
from cluster.harmony import Harmony

logger = logging.getLogger(__name__)


async def _sse(events: AsyncIterator[str]) -> AsyncIterator[str]:
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
    yield "[DONE]"


def create_app(
    config: ClusterConfig,
    harmony: Harmony,
    engine: EngineClient,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> FastAPI:
    """`on_done` hears what happened to every request (the gateway's metrics)."""
    chat = ChatService(config, harmony, engine, on_done)
    completions = CompletionService(config, harmony, engine, on_done)
    keys = [k.get_secret_value().encode() for k in config.auth.api_keys]
    created = int(time.time())

    def authorize(request: Request) -> str | None:
        """Check the bearer key; the tenant it names (by position, never by key material)."""
        if not keys:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        supplied = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key (no short-circuit) so timing reveals nothing.
        matched = None
        for index, key in enumerate(keys):
            if hmac.compare_digest(supplied, key):
                matched = index
        if matched is None:
            raise OpenAIError(
                401,
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                code="invalid_api_key",
            )
        return f"key-{matched}"

    def tenant(key_tenant: str | None, body: SamplingRequest) -> str:
        """Fairness is per API key; in open mode, per the request's `user` field."""
        return key_tenant or body.user or "anonymous"

    app = FastAPI(title="gpt-oss-cluster", version="0.1.0", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.gateway.max_request_body_bytes)
    v1 = [Depends(authorize)]

    def stream_or_json(reply):
        result, headers = reply
        if isinstance(result, AsyncIterator):
            return EventSourceResponse(_sse(result), sep="\n", ping=15, headers=headers)
        return JSONResponse(result.model_dump(exclude_none=True), headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest, key_tenant: str | None = Depends(authorize)
    ):
        return stream_or_json(await chat.create(body, tenant(key_tenant, body)))

    @app.post("/v1/completions")
    async def text_completions(
        body: CompletionRequest, key_tenant: str | None = Depends(authorize)
    ):
        return stream_or_json(await completions.create(body, tenant(key_tenant, body)))

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
