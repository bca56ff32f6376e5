"""One request's life in the gateway: admission, its engine stream, and how it ended (the record
metrics and quotas hear)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from cluster.api.engine_client import EngineClient
from cluster.api.errors import OpenAIError
from cluster.api.output_format import ReplyFormat
from cluster.api.protocol import SamplingRequest
from cluster.api.sampling import engine_request, new_id
from cluster.api.stops import StopMatcher
from cluster.blocks import token_blocks
from cluster.config import ClusterConfig, EffortProfile
from cluster.contracts import (
    Admission,
    Effort,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    LoadReport,
    Outcome,
    Overloaded,
    Release,
    SchedulingRequest,
)
from cluster.harmony import Harmony, ToolSpec, Turn

START_ATTEMPTS = 2  # a replica that dies before the first output: once more elsewhere


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


CompletionHook = Callable[["RequestRecord"], None]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant fairness is kept by, the API key's name (None in open mode),
    and who hears how the request ended (metrics, the key's quota)."""

    tenant: str = "anonymous"
    key: str | None = None
    hooks: tuple[CompletionHook, ...] = ()  # each hears the request's record once, at its end


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
    cached_tokens: int = 0  # of the prompt, held by the engine's prefix cache
    reasoning_tokens: int = 0
    completion_tokens: int = 0
    expected_output_tokens: int = 0  # the cost model's prediction
    admission: Admission | None = None  # where the scheduler placed it (None: never placed)
    release: Release = field(default_factory=Release)  # how it left its replica, for the scheduler

    def met(self, slo: EffortProfile) -> bool:
        """Completed within both of its effort's SLOs."""
        if self.outcome != Outcome.COMPLETED or self.first_token_at is None:
            return False
        n = self.completion_tokens
        itl = (self.finished_at - self.first_token_at) / (n - 1) if n > 1 else 0.0
        return slo.met(self.first_token_at - self.arrived_at, itl)


@dataclass(kw_only=True)
class Generation:
    """One request's progress through admission and its engine stream (chat and completions)."""

    request: EngineRequest
    stop: StopMatcher
    demand: Demand = Demand()
    endpoint: str = "chat"
    caller: Caller = Caller()
    deadline_s: float | None = None  # from arrival; past it, the engine work is aborted (504)
    migration_limit: int = 0  # moves to another replica when its own fails mid-reply
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
    _end_report: LoadReport | None = field(default=None, repr=False)  # on the last output too
    _first_answer_at: float | None = field(default=None, repr=False)
    _gaps: list[float] = field(default_factory=list, repr=False)
    _recorded: bool = field(default=False, repr=False)
    _replica_failed: bool = field(default=False, repr=False)
    _generated: list[int] = field(default_factory=list, repr=False)  # the reply's token ids
    _migrations: int = field(default=0, repr=False)
    _deadline_at: float | None = field(default=None, repr=False)  # event-loop time

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the engine's prefix cache held (as its first output said)."""
        return (self._first.cached_tokens or 0) if self._first is not None else 0

    @property
    def reasoning_tokens(self) -> int:
        return 0  # no channels without harmony parsing

    @property
    def scheduling_request(self) -> SchedulingRequest:
        return self._scheduling(self.request)

    def _scheduling(self, request: EngineRequest) -> SchedulingRequest:
        return SchedulingRequest(
            request_id=request.request_id,
            effort=request.effort,
            prompt_tokens=len(request.prompt_token_ids),
            max_tokens=request.sampling.max_tokens,
            tenant=self.demand.tenant,
            prefix_key=self.demand.prefix_key,
            tools=self.demand.tools,
            prefix_blocks=token_blocks(request.prompt_token_ids),
        )

    def answer_started(self) -> None:
        """The first final-channel text went out (chat calls this)."""
        if self._first_answer_at is None:
            self._first_answer_at = time.time()

    def _done(self, outcome: Outcome, output_tokens: int | None = None) -> None:
        """The request ended (once): every completion hook hears its record, the scheduler's
        feedback first (it frees the seat), then the caller's (quota, metrics).
        `output_tokens` is set only for a request that ran to its end."""
        if self._recorded:
            return
        self._recorded = True
        release = Release(
            output_tokens, self._first_at, self._ended_at, self._replica_failed, self._end_report
        )
        record = RequestRecord(
            endpoint=self.endpoint,
            effort=self.request.effort,
            key=self.caller.key,
            outcome=outcome,
            arrived_at=self._arrived_at,
            finished_at=time.time(),
            admitted_at=self._admitted_at,
            first_token_at=self._first_at,
            first_answer_at=self._first_answer_at,
            token_gaps=tuple(self._gaps),
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            completion_tokens=self.completion_tokens,
            expected_output_tokens=self.request.expected_output_tokens,
            admission=self._admission,
            release=release,
        )
        self._admission = None
        for hook in (self._scheduler_feedback, *self.caller.hooks):
            hook(record)

    def _scheduler_feedback(self, record: RequestRecord) -> None:
        if self._engine is not None and record.admission is not None:
            self._engine.release(record.admission, record.release)

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
                        self._failed_attempt()
                        if attempt == START_ATTEMPTS:
                            raise
            self._first_at = time.time()
        except TimeoutError:
            self._done(Outcome.DEADLINE)
            raise self._deadline_error() from None
        except Overloaded as err:
            self._done(Outcome.REJECTED)
            raise OpenAIError(
                429,
                "The cluster is at capacity; retry after the Retry-After delay.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(err.retry_after_s)},
            ) from None
        except EngineUnavailable:
            self._done(Outcome.FAILED)
            raise OpenAIError(
                503, "No engine replica could take the request; retry.", code="engine_unavailable"
            ) from None
        except StopAsyncIteration:
            self._done(Outcome.FAILED)
            raise OpenAIError(503, "the engine ended the request without output") from None
        except BaseException as err:
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
        outputs, self._first = await self._place(engine, self.request, admission)
        return outputs

    async def _place(
        self, engine: EngineClient, request: EngineRequest, admission: Admission
    ) -> tuple[AsyncIterator[EngineOutput], EngineOutput]:
        """Send `request` to the replica `admission` names, again wherever it queues next while
        replicas refuse it; the stream and its first output."""
        while True:
            outputs = engine.generate(replace(request, replica=admission.replica))
            first = await anext(outputs)
            if not first.refused:
                break
            # Another gateway took the room since the report this one placed by: the request
            # queues again, in its place (Serve's own retry would be first come, first served).
            await outputs.aclose()
            self._admission = None  # the scheduler has it back
            admission = await engine.readmit(admission, first.report)
            self._admission = admission
        if first.received_at is not None:
            engine.arrived(admission, first.received_at)
        return outputs, first

    async def close(self) -> None:
        """Abort whatever is left (idempotent: after a finished stream it does nothing)."""
        try:
            if self._rest is not None:
                await self._rest.aclose()
        finally:
            self._done(Outcome.CANCELLED)

    def _deadline_error(self) -> OpenAIError:
        limit = f" of {self.deadline_s:g} s" if self.deadline_s is not None else ""
        return OpenAIError(
            504,
            f"The request ran past its deadline{limit} for reasoning effort "
            f"{self.request.effort.value} and was stopped.",
            code="deadline_exceeded",
        )

    def _failed_attempt(self) -> None:
        """The replica went away before the first output: free its seat with the scheduler
        (which then avoids the replica) before the request tries elsewhere."""
        if self._engine is not None and self._admission is not None:
            self._engine.release(self._admission, Release(replica_failed=True))
            self._admission = None

    async def _next_output(self) -> EngineOutput | None:
        """The stream's next output. A replica that fails under the request, or leaves with it
        still running (`EngineOutput.draining`), hands it on: the request moves to another (up
        to `migration_limit` times), which continues the reply."""
        left: tuple[Admission | None, str] | None = None  # the placement it left, and why
        while True:
            try:
                if left is not None:
                    return await self._migrate(*left)
                assert self._rest is not None
                output = await anext(self._rest, None)
            except EngineUnavailable:
                if not self._movable:
                    raise
                left = await self._leave("failure")
                continue
            if output is None or not output.draining:
                return output
            if self._movable:  # else it runs to its end there, within `drain_timeout_s`
                left = await self._leave("drain")

    @property
    def _movable(self) -> bool:
        return (
            self._migrations < self.migration_limit
            and self.request.constraint is None
            and self._engine is not None
        )

    async def _leave(self, cause: str) -> tuple[Admission | None, str]:
        """Leave the replica: close the stream (which aborts the request there) and free the
        seat; a failed replica gets nothing more from the scheduler."""
        self._migrations += 1
        if self._rest is not None:
            rest, self._rest = self._rest, None
            await rest.aclose()
        admission, self._admission = self._admission, None
        if self._engine is not None and admission is not None:
            self._engine.release(admission, Release(replica_failed=cause == "failure"))
        return admission, cause

    async def _migrate(self, left: Admission | None, cause: str) -> EngineOutput:
        """Queue the reply's continuation (the prompt and the reply so far, the budget left)
        ahead of new arrivals, send it where the scheduler places it; its first output."""
        assert self._engine is not None
        done, sampling = len(self._generated), self.request.sampling
        continuation = replace(
            self.request,
            prompt_token_ids=[*self.request.prompt_token_ids, *self._generated],
            sampling=replace(sampling, max_tokens=sampling.max_tokens - done),
            expected_output_tokens=max(self.request.expected_output_tokens - done, 1),
            resumed_tokens=done,
        )
        self._admission = await self._engine.resume(left, self._scheduling(continuation), cause)
        self._rest, first = await self._place(self._engine, continuation, self._admission)
        return first

    async def token_batches(self) -> AsyncIterator[EngineOutput]:
        """Engine outputs as they arrive; stopping early (or a stop string) aborts the engine
        work."""
        assert self._rest is not None, "start() first"
        output, last_at, failed = self._first, self._first_at, None
        try:
            while output is not None:
                self.completion_tokens += len(output.token_ids)
                self._generated += output.token_ids
                self.finish_reason = output.finish_reason or self.finish_reason
                self._ended_at = output.ended_at
                self._end_report = output.report or self._end_report
                yield output
                if output.finish_reason is not None or self.stop.stopped:
                    break
                async with asyncio.timeout_at(self._deadline_at):
                    output = await self._next_output()
                if output is not None and output.token_ids and last_at is not None:
                    now = time.time()
                    self._gaps.append((now - last_at) / len(output.token_ids))
                    last_at = now
        except TimeoutError:
            failed = Outcome.DEADLINE
            raise self._deadline_error() from None
        except EngineUnavailable:
            failed = Outcome.FAILED
            self._replica_failed = True
            raise OpenAIError(
                503,
                "The engine replica serving this request stopped; retry.",
                code="engine_unavailable",
            ) from None
        except Exception:
            failed = Outcome.FAILED
            raise
        finally:
            if self._rest is not None:
                await self._rest.aclose()
            ran_to_end = self.finish_reason in ("stop", "length") and not self.stop.stopped
            if self.stop.stopped:
                self.finish_reason = "stop"
            finished = ran_to_end or self.stop.stopped
            self._done(
                failed or (Outcome.COMPLETED if finished else Outcome.CANCELLED),
                self.completion_tokens if ran_to_end else None,
            )


class Service:
    """What an endpoint's service holds: the config, harmony and the engines."""

    endpoint: str

    def __init__(self, config: ClusterConfig, harmony: Harmony, engine: EngineClient) -> None:
        self._config = config
        self._harmony = harmony
        self._engine = engine

    def renderer(
        self,
        body: SamplingRequest,
        conversation: Sequence[Turn],
        instructions: str | None,
        tools: Sequence[ToolSpec],
        *,
        id_prefix: str,
        requested_max_tokens: int | None,
        max_tokens_param: str,
        reply: ReplyFormat | None = None,
    ) -> Callable[..., EngineRequest]:
        """`render(effort, degraded=False)`: the conversation as an engine request at an effort.
        The first render and a degraded re-render share one request id. `instructions` already
        hold the reply's response format (`ReplyFormat.instructions`); `reply` sets the engine's
        constraint."""
        request_id = new_id(id_prefix)

        def render(effort: Effort, degraded: bool = False) -> EngineRequest:
            prompt = self._harmony.render(conversation, effort, instructions, tools)
            return engine_request(
                self._config,
                body,
                prompt,
                request_id=request_id,
                effort=effort,
                requested_max_tokens=requested_max_tokens,
                max_tokens_param=max_tokens_param,
                stop_token_ids=self._harmony.stop_token_ids,
                degraded=degraded,
                reply=reply,
            )

        return render
