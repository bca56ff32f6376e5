"""The two Ray Serve deployments: the gateway (HTTP ingress) and the engine replicas."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError
from ray.serve import context as serve_context
from ray.serve._private.utils import generate_request_id
from ray.serve.exceptions import BackPressureError, RayServeException, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from cluster.api.auth import Quotas
from cluster.api.gateway import create_app
from cluster.api.response_store import make_store
from cluster.config import ClusterConfig, validate_config, with_secret_env
from cluster.contracts import (
    Admission,
    CacheDelta,
    DemandSignal,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    LoadReport,
    Overloaded,
    Release,
    SchedulingRequest,
)
from cluster.engine.factory import build_engine
from cluster.harmony import Harmony
from cluster.metrics import EngineMetrics, GatewayMetrics, RouterMetrics
from cluster.serve.channels import Batch, Channel, Channels, Outboxes, while_caller_lives
from cluster.serve.dispatcher import Dispatcher, subscribe_load_reports, subscribe_replicas
from cluster.serve.quota_ledger import sync_forever

READY_TIMEOUT_S = 2.0
CALLER_PING_S = 10.0


def _own_call(method: DeploymentHandle, *args: Any) -> Any:
    """`method.remote(*args)` as a Serve request of its own. Serve names a call after the request
    it is made in (every engine call of one HTTP request, and a channel opened while serving it,
    would share that id), and its router hands the replica it finds to the waiting call of that
    id: calls sharing one took each other's replicas, or waited for ever."""

    def call() -> Any:
        current = serve_context._get_serve_request_context()
        own = dataclasses.replace(current, _internal_request_id=generate_request_id())
        serve_context._serve_request_context.set(own)
        return method.remote(*args)

    return contextvars.copy_context().run(call)


async def _alive(caller: ActorHandle | None) -> bool:
    """Whether the actor that opened a stream still lives (a busy one counts as alive)."""
    if caller is None:
        return True
    try:
        await asyncio.wait_for(caller.__ray_ready__.remote(), CALLER_PING_S)
    except RayActorError:
        return False
    except TimeoutError:
        pass
    return True


class EngineServer:
    """One engine replica. `record_routing_stats` is the load report Serve hands to routers."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._engine = build_engine(validate_config(config))
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._metrics = EngineMetrics(self._replica)
        self._outboxes = Outboxes()

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        # Serve cancels this generator when the caller goes away; closing the engine's
        # iterator then aborts the request and frees its batch slot and KV.
        async with aclosing(self._engine.generate(request)) as outputs:
            async for output in outputs:
                yield output

    async def run(self, request: EngineRequest, gateway: str) -> str:
        """Run a request whose outputs go out on `gateway`'s channel; returns this replica's id.
        Cancelled when the caller goes away, which aborts the request."""
        async with aclosing(self._engine.generate(request)) as outputs:
            await self._outboxes.run(gateway, request.request_id, outputs)
        return self._replica

    async def cache_events(self, channel: Channel) -> AsyncIterator[CacheDelta]:
        """This engine's prefix cache, then its changes, for `channel.gateway` (pinned here by
        the request router) while it lives; ends at once where the engine does not relay them."""
        events = self._engine.cache_events()
        if events is None:
            return
        async with aclosing(while_caller_lives(events, partial(_alive, channel.caller))) as deltas:
            async for delta in deltas:
                yield delta

    async def attach(self, channel: Channel) -> AsyncIterator[Batch]:
        """`channel.gateway`'s output channel (the request router pins it to this replica),
        while that gateway lives."""
        batches = self._outboxes.attach(channel.gateway)
        async with aclosing(while_caller_lives(batches, partial(_alive, channel.caller))) as live:
            async for batch in live:
                yield batch

    def record_routing_stats(self) -> dict[str, float]:
        report = self._engine.load_report()
        self._metrics.record(report)
        return report.to_dict()

    async def ready(self) -> bool:
        return True

    async def __del__(self) -> None:
        await self._engine.shutdown()


class ServeEngineClient:
    """The gateway's view of the engine deployment: the dispatcher decides when and where each
    request runs (effort-aware, or at once under `least_outstanding_tokens`); the Serve handle
    (custom router) takes it there."""

    def __init__(self, handle: DeploymentHandle, config: ClusterConfig) -> None:
        self._stream = handle.options(stream=True, method_name="generate")
        self._run = handle.options(method_name="run")
        self._attach = handle.options(stream=True, method_name="attach")
        self._ready = handle.options(method_name="ready")
        self._cache_events = handle.options(stream=True, method_name="cache_events")
        self._retry_after_s = config.router.retry_after_s
        # Unique per gateway process, so an engine replica never mixes two lives' outputs.
        self._id = f"{serve.get_replica_context().replica_id.unique_id}:{uuid.uuid4().hex}"
        self._actor = ray.get_runtime_context().current_actor  # engines ping it (Channel.caller)
        self._dispatcher = Dispatcher(
            config, metrics=RouterMetrics(), cache_events=partial(self._pinned, self._cache_events)
        )
        subscribe_load_reports(handle.app_name, handle.deployment_name, self._dispatcher.publish)
        self._channels: Channels | None = None
        if config.gateway.multiplex_outputs:
            self._channels = Channels(
                partial(self._pinned, self._attach), config.engine.drain_grace_s
            )
            subscribe_replicas(handle.app_name, handle.deployment_name, self._channels.replicas)

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        return await self._dispatcher.admit(request, degradable)

    async def readmit(self, admission: Admission, report: LoadReport) -> Admission:
        return await self._dispatcher.readmit(admission, report)

    async def resume(
        self, moved: Admission | None, request: SchedulingRequest, cause: str
    ) -> Admission:
        return await self._dispatcher.resume(moved, request, cause)

    def arrived(self, admission: Admission, received_at: float) -> None:
        self._dispatcher.arrived(admission, received_at)

    def release(self, admission: Admission, end: Release) -> None:
        self._dispatcher.release(admission, end)

    def demand(self) -> DemandSignal:
        return self._dispatcher.demand()

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._channels is None:
            return self._streamed(request)
        response = _own_call(self._run, request, self._id)
        return self._channels.stream(
            request.request_id, self._ran(response), response.cancel, request.replica
        )

    async def _streamed(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        responses = _own_call(self._stream, request)
        try:
            async for output in responses:
                yield output
        except BackPressureError:
            raise Overloaded(self._retry_after_s) from None
        except RayActorError as err:  # died, or unreachable (ActorDiedError, ActorUnavailableError)
            raise EngineUnavailable(type(err).__name__) from None
        finally:
            responses.cancel()

    async def _ran(self, response: DeploymentResponse) -> str:
        try:
            return await response
        except BackPressureError:
            raise Overloaded(self._retry_after_s) from None
        except (RayActorError, RequestCancelledError) as err:  # died; or cancelled there
            raise EngineUnavailable(type(err).__name__) from None

    async def _pinned(self, call: DeploymentHandle, replica: str) -> AsyncIterator[Any]:
        """A long-lived stream from one engine replica (the request router pins the `Channel`):
        output batches (`attach`) or prefix-cache changes (`cache_events`)."""
        responses = _own_call(call, Channel(self._id, replica, self._actor))
        try:
            async for item in responses:
                yield item
        except (RayError, RayServeException) as err:  # the replica died, or Ray stopped the stream
            raise EngineUnavailable(type(err).__name__) from None
        finally:
            responses.cancel()

    async def ready(self) -> bool:
        """An engine replica answers and its load has reached this gateway
        (the call itself starts the router that carries the load reports)."""
        try:
            answered = await asyncio.wait_for(_own_call(self._ready), READY_TIMEOUT_S)
        except (TimeoutError, RayError, RayServeException):
            return False
        return answered and self._dispatcher.has_reports


@serve.ingress()
class Gateway:
    """HTTP ingress: the FastAPI app of cluster.api over a handle to the engine deployment."""

    def __init__(self, config: dict[str, Any], engine: DeploymentHandle) -> None:
        self._config = with_secret_env(validate_config(config))
        self._harmony = Harmony(
            self._config.harmony.vocab_dir, self._config.harmony.conversation_start_date
        )
        self._engine = ServeEngineClient(engine, self._config)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """This gateway's demand, the autoscaling policy's input (cluster/serve/autoscaling.py).
        On the replica's event loop, where the scheduler lives."""
        return self._engine.demand().to_metrics()

    def __serve_build_asgi_app__(self):
        metrics = GatewayMetrics(self._config.efforts)
        quotas, background = Quotas(), None
        if self._config.auth.limited:
            context = serve.get_replica_context()
            background = partial(
                sync_forever,
                quotas,
                context.app_name,
                context.replica_id.unique_id,
                self._config.auth.quota_sync_s,
            )
        return create_app(
            self._config,
            self._harmony,
            self._engine,
            metrics.record,
            quotas=quotas,
            background=background,
            store=make_store(self._config.responses),
        )
