"""What chat and completions share: limits, sampling, stop strings, and the engine call itself."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from cluster.api.errors import OpenAIError
from cluster.api.protocol import SamplingRequest
from cluster.config import ClusterConfig, EffortProfile
from cluster.contracts import (
    Admission,
    Effort,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    Outcome,
    Overloaded,
    SamplingParams,
    SchedulingRequest,
)
from cluster.engine.base import Engine
from cluster.harmony import Harmony


class EngineClient(Protocol):
    """How the gateway reaches engines: a Serve handle in the cluster, an engine object in tests."""

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        """Wait until the request may run; raise `Overloaded` to shed it. `degradable`: the
        caller can re-render it at a lower effort."""

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    def arrived(self, admission: Admission, received_at: float) -> None:
        """The replica took the request at `received_at` (its clock; from the first output)."""

    def release(
        self,
        admission: Admission,
        output_tokens: int | None,
        first_output_at: float | None,
        replica_failed: bool = False,
        ended_at: float | None = None,
    ) -> None:
        """The request is done with its replica (`output_tokens` None: it did not finish;
        `first_output_at`: wall time of its first output, None if there was none;
        `replica_failed`: the replica went away under it; `ended_at`: when the replica freed
        its seat, if it said so)."""

    async def ready(self) -> bool: ...


START_ATTEMPTS = 2  # a replica that dies before the first output: once more elsewhere


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_model(config: ClusterConfig, model: str) -> None:
    if model not in (config.model.served_name, config.model.name):
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist. Serving `{config.model.served_name}`.",
            param="model",
            code="model_not_found",
        )


def resolve_max_tokens(
    config: ClusterConfig, effort: Effort, requested: int | None, prompt_tokens: int, param: str
) -> int:
    """The output budget: requested or the effort's default, within the effort cap and context."""
    profile = config.efforts[effort]
    context = config.model.max_model_len
    room = context - prompt_tokens
    if room <= 0:
        raise OpenAIError(
            400,
            f"The prompt has {prompt_tokens} tokens, beyond the model's context length of "
            f"{context} tokens.",
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(profile.default_max_tokens, room)
    if profile.max_tokens is not None and requested > profile.max_tokens:
        raise OpenAIError(
            400,
            f"{param} is {requested}, above the limit of {profile.max_tokens} for "
            f"reasoning effort {effort.value}.",
            param=param,
        )
    if requested > room:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. You asked for "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} "
            f"for the output).",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def engine_request(
    config: ClusterConfig,
    body: SamplingRequest,
    prompt: list[int],
    *,
    request_id: str,
    effort: Effort,
    requested_max_tokens: int | None,
    max_tokens_param: str,
    stop_token_ids: Sequence[int],
    degraded: bool = False,
) -> EngineRequest:
    """The engine's view of a request: output budget checked, sampling set, cost prior attached.
    A request `degraded` to a lower effort keeps its id and the client's budget within that
    effort's cap."""
    cap = config.efforts[effort].max_tokens
    if degraded and requested_max_tokens and cap:
        requested_max_tokens = min(requested_max_tokens, cap)
    max_tokens = resolve_max_tokens(
        config, effort, requested_max_tokens, len(prompt), max_tokens_param
    )
    prior = config.efforts[effort].output_tokens
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop_token_ids=tuple(stop_token_ids),
        ),
        effort=effort,
        expected_output_tokens=min(max_tokens, math.ceil(prior.mean_tokens)),
    )


class StopMatcher:
    """Finds client stop strings in streamed text, holding back only what could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to emit now; after a stop string is seen, nothing more."""
        if not self._stops:
            return text
        if self.stopped:
            return ""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out
        cut = max(len(self._pending) - self._hold, 0)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


@dataclass(frozen=True)
class Demand:
    """What the scheduler needs to know about a request beyond the engine request itself."""

    tenant: str = "anonymous"
    prefix_key: str = ""  # the rendered prefix shared with other requests (effort + instructions)
    tools: bool = False
    # Re-renders the request at a lower effort, so the scheduler may degrade it instead of
    # shedding it; None where the prompt is not ours to re-render (raw completions).
    rerender: Callable[[Effort], EngineRequest] | None = None


@dataclass(frozen=True)
class Stream:
    """A streamed reply: its SSE payloads, and `close`, which frees the request's engine work and
    seat even when the payloads were never read (a client gone before the first write)."""

    events: AsyncIterator[str | dict[str, str]]  # data, or {"event": ..., "data": ...}
    close: Callable[[], Awaitable[None]]
    done_marker: bool = True  # chat and completions end with `data: [DONE]`; Responses not


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant fairness is kept by, the API key's name (None in open mode),
    and who hears how the request ended (metrics, the key's quota)."""

    tenant: str = "anonymous"
    key: str | None = None
    on_done: Callable[[RequestRecord], None] | None = None


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request, for metrics: times are wall-clock seconds."""

    endpoint: str
    effort: Effort  # the effort it ran at
    key: str | None  # the API key's name
    outcome: Outcome
    arrived_at: float
    finished_at: float
    admitted_at: float | None = None
    first_token_at: float | None = None
    first_answer_at: float | None = None  # first final-channel token (chat)
    token_gaps: tuple[float, ...] = ()  # seconds per token between engine outputs
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    completion_tokens: int = 0
    expected_output_tokens: int = 0  # the cost model's prediction

    def met(self, slo: EffortProfile) -> bool:
        """Completed within both of its effort's SLOs."""
        if self.outcome != Outcome.COMPLETED or self.first_token_at is None:
            return False
        n = self.completion_tokens
        itl = (self.finished_at - self.first_token_at) / (n - 1) if n > 1 else 0.0
        return slo.met(self.first_token_at - self.arrived_at, itl)


@dataclass
class Generation:
    """One request's progress through admission and its engine stream (chat and completions)."""

    request: EngineRequest
    stop: StopMatcher
    demand: Demand = Demand()
    endpoint: str = "chat"
    caller: Caller = Caller()
    deadline_s: float | None = None  # from arrival; past it, the engine work is aborted (504)
    completion_tokens: int = 0
    finish_reason: str | None = None
    degraded_from: Effort | None = None
    _engine: EngineClient | None = field(default=None, repr=False)
    _admission: Admission | None = field(default=None, repr=False)
    _rest: AsyncIterator[EngineOutput] | None = field(default=None, repr=False)
    _first: EngineOutput | None = field(default=None, repr=False)
    _arrived_at: float = field(default_factory=time.time, repr=False)
    _admitted_at: float | None = field(default=None, repr=False)
    _first_at: float | None = field(default=None, repr=False)
    _ended_at: float | None = field(default=None, repr=False)  # the replica's, on the last output
    _first_answer_at: float | None = field(default=None, repr=False)
    _gaps: list[float] = field(default_factory=list, repr=False)
    _recorded: bool = field(default=False, repr=False)
    _deadline_at: float | None = field(default=None, repr=False)  # event-loop time

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def reasoning_tokens(self) -> int:
        return 0  # no channels without harmony parsing

    @property
    def scheduling_request(self) -> SchedulingRequest:
        return SchedulingRequest(
            request_id=self.request.request_id,
            effort=self.request.effort,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.request.sampling.max_tokens,
            tenant=self.demand.tenant,
            prefix_key=self.demand.prefix_key,
            tools=self.demand.tools,
        )

    def answer_started(self) -> None:
        """The first final-channel text went out (chat calls this)."""
        if self._first_answer_at is None:
            self._first_answer_at = time.time()

    def _done(self, outcome: Outcome) -> None:
        if self.caller.on_done is None or self._recorded:
            return
        self._recorded = True
        self.caller.on_done(RequestRecord(
            endpoint=self.endpoint, effort=self.request.effort, key=self.caller.key,
            outcome=outcome,
            arrived_at=self._arrived_at, finished_at=time.time(), admitted_at=self._admitted_at,
            first_token_at=self._first_at, first_answer_at=self._first_answer_at,
            token_gaps=tuple(self._gaps), prompt_tokens=self.prompt_tokens,
            reasoning_tokens=self.reasoning_tokens, completion_tokens=self.completion_tokens,
            expected_output_tokens=self.request.expected_output_tokens,
        ))  # fmt: skip

    @property
    def headers(self) -> dict[str, str]:
        """Response headers: the effort the request ran at, and the one asked for if lowered."""
        headers = {"X-Reasoning-Effort": self.request.effort.value}
        if self.degraded_from is not None:
            headers["X-Reasoning-Effort-Degraded-From"] = self.degraded_from.value
        return headers

    async def start(self, engine: EngineClient) -> None:
        """Admit the request and wait for its first output, so a shed request (429) still gets
        a proper HTTP status. A replica that goes away before any output is told to the
        scheduler and the request runs elsewhere (once more): the client sees nothing of it."""
        if self.deadline_s is not None:
            self._deadline_at = asyncio.get_running_loop().time() + self.deadline_s
        try:
            async with asyncio.timeout_at(self._deadline_at):
                for attempt in range(1, START_ATTEMPTS + 1):
                    try:
                        outputs = await self._attempt(engine)
                        break
                    except EngineUnavailable:
                        self._release(None, replica_failed=True)
                        if attempt == START_ATTEMPTS:
                            raise
            self._first_at = time.time()
        except TimeoutError:
            self._release(None)
            self._done(Outcome.DEADLINE)
            raise self._deadline_error() from None
        except Overloaded as err:
            self._release(None)
            self._done(Outcome.REJECTED)
            raise OpenAIError(
                429,
                "The cluster is at capacity; retry after the Retry-After delay.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(err.retry_after_s)},
            ) from None
        except EngineUnavailable:
            self._done(Outcome.FAILED)
            raise OpenAIError(503, "No engine replica could take the request; retry.",
                              code="engine_unavailable") from None  # fmt: skip
        except StopAsyncIteration:
            self._release(None)
            self._done(Outcome.FAILED)
            raise OpenAIError(503, "the engine ended the request without output") from None
        except BaseException as err:
            self._release(None)
            self._done(Outcome.FAILED if isinstance(err, Exception) else Outcome.CANCELLED)
            raise
        self._rest = outputs

    async def _attempt(self, engine: EngineClient) -> AsyncIterator[EngineOutput]:
        """One admission and engine call, up to the first output."""
        demand = self.demand
        admission = await engine.admit(self.scheduling_request, demand.rerender is not None)
        self._engine, self._admission = engine, admission  # released on failure
        self._admitted_at = time.time()
        if admission.effort is not None and demand.rerender is not None:
            self.degraded_from = self.degraded_from or self.request.effort  # the asked-for one
            self.request = demand.rerender(admission.effort)
        outputs = engine.generate(
            replace(self.request, replica=admission.replica, demand=admission.demand)
        )
        self._first = await anext(outputs)
        if self._first.received_at is not None:
            engine.arrived(admission, self._first.received_at)
        return outputs

    async def close(self) -> None:
        """Abort whatever is left (idempotent: after a finished stream it does nothing)."""
        try:
            if self._rest is not None:
                await self._rest.aclose()
        finally:
            self._release(None)
            self._done(Outcome.CANCELLED)

    def _deadline_error(self) -> OpenAIError:
        limit = f" of {self.deadline_s:g} s" if self.deadline_s is not None else ""
        return OpenAIError(
            504,
            f"The request ran past its deadline{limit} for reasoning effort "
            f"{self.request.effort.value} and was stopped.",
            code="deadline_exceeded",
        )

    def _release(self, output_tokens: int | None, replica_failed: bool = False) -> None:
        if self._engine is not None and self._admission is not None:
            self._engine.release(
                self._admission, output_tokens, self._first_at, replica_failed, self._ended_at
            )
            self._admission = None

    async def token_batches(self) -> AsyncIterator[list[int]]:
        """Token ids as they arrive; stopping early (or a stop string) aborts the engine work."""
        assert self._rest is not None, "start() first"
        output, last_at, failed = self._first, self._first_at, None
        try:
            while output is not None:
                self.completion_tokens += len(output.token_ids)
                self.finish_reason = output.finish_reason or self.finish_reason
                self._ended_at = output.ended_at
                yield output.token_ids
                if output.finish_reason is not None or self.stop.stopped:
                    break
                async with asyncio.timeout_at(self._deadline_at):
                    output = await anext(self._rest, None)
                if output is not None and output.token_ids and last_at is not None:
                    now = time.time()
                    self._gaps.append((now - last_at) / len(output.token_ids))
                    last_at = now
        except TimeoutError:
            failed = Outcome.DEADLINE
            raise self._deadline_error() from None
        except EngineUnavailable:
            failed = Outcome.FAILED
            self._release(None, replica_failed=True)
            raise OpenAIError(503, "The engine replica serving this request stopped; retry.",
                              code="engine_unavailable") from None  # fmt: skip
        except Exception:
            failed = Outcome.FAILED
            raise
        finally:
            await self._rest.aclose()
            ran_to_end = self.finish_reason in ("stop", "length") and not self.stop.stopped
            self._release(self.completion_tokens if ran_to_end else None)
            if self.stop.stopped:
                self.finish_reason = "stop"
            finished = ran_to_end or self.stop.stopped
            self._done(failed or (Outcome.COMPLETED if finished else Outcome.CANCELLED))


class Service:
    """What an endpoint's service holds: the config, harmony and the engines."""

    endpoint: str

    def __init__(self, config: ClusterConfig, harmony: Harmony, engine: EngineClient) -> None:
        self._config = config
        self._harmony = harmony
        self._engine = engine


class InProcessEngine:
    """EngineClient over an engine object in this process (unit tests, benchmarks): no queue,
    every request runs at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        return Admission()

    def arrived(self, admission: Admission, received_at: float) -> None:
        pass

    def release(
        self,
        admission: Admission,
        output_tokens: int | None,
        first_output_at: float | None,
        replica_failed: bool = False,
        ended_at: float | None = None,
    ) -> None:
        pass

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        return self.engine.generate(request)

    async def ready(self) -> bool:
        return True
