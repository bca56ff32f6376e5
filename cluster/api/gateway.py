"""The FastAPI app of the gateway: routes, auth, SSE. Ray Serve hosts it; tests run it in-process."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types import Model
from sse_starlette import EventSourceResponse

from cluster.api.chat import ChatService
from cluster.api.completions import CompletionService
from cluster.api.errors import BodySizeLimit, OpenAIError, install_error_handlers
from cluster.api.generation import EngineClient
from cluster.api.protocol import ChatCompletionRequest, CompletionRequest
from cluster.config import ClusterConfig
from cluster.harmony import Harmony

logger = logging.getLogger(__name__)


async def _sse(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """OpenAI's stream framing: `data: <json>` per chunk, an error event if the engine fails
    mid-stream (headers are already sent), then `data: [DONE]`."""
    try:
        async for event in events:
            yield event
    except OpenAIError as err:
        yield JSONResponse(err.body()).body.decode()
    except Exception:
        logger.exception("stream failed")
        error = OpenAIError(500, "the engine failed while streaming", code="engine_error")
        yield JSONResponse(error.body()).body.decode()
    yield "[DONE]"


def create_app(config: ClusterConfig, harmony: Harmony, engine: EngineClient) -> FastAPI:
    chat = ChatService(config, harmony, engine)
    completions = CompletionService(config, harmony, engine)
    keys = [k.get_secret_value().encode() for k in config.auth.api_keys]
    created = int(time.time())

    def authorize(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        supplied = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key (no short-circuit) so timing reveals nothing.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if not matched:
            raise OpenAIError(
                401,
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                code="invalid_api_key",
            )

    app = FastAPI(title="gpt-oss-cluster", version="0.1.0", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.gateway.max_request_body_bytes)
    v1 = [Depends(authorize)]

    def stream_or_json(result):
        if isinstance(result, AsyncIterator):
            return EventSourceResponse(_sse(result), sep="\n", ping=15)
        return JSONResponse(result.model_dump(exclude_none=True))

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat_completions(body: ChatCompletionRequest):
        return stream_or_json(await chat.create(body))

    @app.post("/v1/completions", dependencies=v1)
    async def text_completions(body: CompletionRequest):
        return stream_or_json(await completions.create(body))

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
