"""The two Ray Serve deployments: the gateway (HTTP ingress) and the engine replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from cluster.api.gateway import create_app
from cluster.api.generation import Overloaded
from cluster.config import validate_config
from cluster.engine.base import EngineOutput, EngineRequest
from cluster.engine.factory import build_engine
from cluster.harmony import Harmony

READY_TIMEOUT_S = 2.0


class EngineServer:
    """One engine replica. `record_routing_stats` is the load report Serve hands to routers."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._engine = build_engine(validate_config(config))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        # Serve cancels this generator when the caller goes away; closing the engine's
        # iterator then aborts the request and frees its batch slot and KV.
        async for output in self._engine.generate(request):
            yield output

    def record_routing_stats(self) -> dict[str, float]:
        return self._engine.load_report().to_dict()

    async def ready(self) -> bool:
        return True

    async def __del__(self) -> None:
        await self._engine.shutdown()


class ServeEngineClient:
    """The gateway's view of the engine deployment through a Serve handle (custom router)."""

    def __init__(self, handle: DeploymentHandle, retry_after_s: int) -> None:
        self._stream = handle.options(stream=True, method_name="generate")
        self._ready = handle.options(method_name="ready")
        self._retry_after_s = retry_after_s

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        responses = self._stream.remote(request)
        try:
            async for output in responses:
                yield output
        except BackPressureError:
            raise Overloaded(self._retry_after_s) from None
        finally:
            responses.cancel()

    async def ready(self) -> bool:
        try:
            return await asyncio.wait_for(self._ready.remote(), READY_TIMEOUT_S)
        except (TimeoutError, RayError, RayServeException):
            return False


@serve.ingress()
class Gateway:
    """HTTP ingress: the FastAPI app of cluster.api over a handle to the engine deployment."""

    def __init__(self, config: dict[str, Any], engine: DeploymentHandle) -> None:
        self._config = validate_config(config)
        self._harmony = Harmony(
            self._config.harmony.vocab_dir, self._config.harmony.conversation_start_date
        )
        self._engine = ServeEngineClient(engine, self._config.router.retry_after_s)

    def __serve_build_asgi_app__(self):
        return create_app(self._config, self._harmony, self._engine)
