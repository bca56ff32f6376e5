"""The types every layer shares: what a request is, what an engine answers, what a replica reports
and how a request ended.

The gateway (`cluster.api`), the Serve shell (`cluster.serve`), the engines (`cluster.engine`), the
pure scheduling core (`cluster.scheduling`) and the simulator all speak these, so none of them
imports another's internals. Values cross Ray as plain frozen dataclasses. This module imports
nothing from the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]


class Effort(StrEnum):
    """Harmony reasoning effort; it lives in the system message and scales output length ~10-20x."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 for low: vLLM's priority (lower runs first) and the order of degradation."""
        return list(Effort).index(self)

    @property
    def lower(self) -> Effort | None:
        """The next effort down, which a degraded request runs at; None for low."""
        return list(Effort)[self.rank - 1] if self.rank else None


class Outcome(StrEnum):
    """How a request ended, as metrics, quotas and the scheduler's feedback hear it."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"  # the client left
    FAILED = "failed"  # the engine failed, or the request could not start
    DEADLINE = "deadline"  # ran past its effort's deadline: 504
    REJECTED = "rejected"  # shed by admission: 429
    QUOTA = "quota"  # over its API key's limits: 429


@dataclass(frozen=True)
class SchedulingRequest:
    """What the scheduler knows of a request when it arrives: the gateway hands it in, the
    simulator builds it from its workload. A degraded request keeps its id at the lower effort."""

    request_id: str
    effort: Effort
    prompt_tokens: int
    max_tokens: int  # the output budget (bounds the expected length)
    tenant: str = "anonymous"
    prefix_key: str = ""  # the rendered prefix shared with other requests (effort + instructions)
    tools: bool = False
    prefix_blocks: tuple[int, ...] = ()  # the rendered prompt's block hashes (cluster.blocks)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # top alternatives to report per token (0: the sampled only)


# One generated token's log-probability, then its top alternatives (token id, logprob), best first.
TokenLogprob = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class ToolFormat:
    """A function the reply may call, with the JSON Schema its arguments hold to."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class OutputConstraint:
    """What the engine holds a reply to, in harmony's structure: an optional analysis message of
    at most `reasoning_budget` tokens, then the final message (free text, or JSON under
    `final_schema`) or a call to one of `tools` with schema-valid JSON arguments. With `final`
    False a tool call is forced. Engines enforce it while sampling (vLLM: an xgrammar structural
    tag; the mock writes to it)."""

    reasoning_budget: int | None = None
    reasoning_required: bool = False  # the reply opens with analysis (what the effort asks)
    final: bool = True
    final_schema: dict[str, Any] | None = None
    tools: tuple[ToolFormat, ...] = ()


@dataclass(frozen=True)
class EngineRequest:
    """One request as an engine sees it: harmony token ids in, the output budget and sampling.
    The scheduling fields ride along because Serve's router only sees the call's arguments."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    effort: Effort
    expected_output_tokens: int = 0  # the router's prior for this request's output length
    # The engine replica the gateway's scheduler chose (a Serve replica id); None lets Serve's
    # router pick, as before the first load report arrives.
    replica: str | None = None
    constraint: OutputConstraint | None = None  # None: the model writes freely
    # A request that moved from a failed replica mid-reply: the last `resumed_tokens` of the
    # prompt are its reply so far, which the engine continues (`max_tokens`: what is left).
    resumed_tokens: int = 0

    @property
    def priority(self) -> int:
        """vLLM priority (lower runs first; with `scheduling_policy: priority`): the effort rank,
        so requests that do wait inside an engine keep the router's low-before-high order."""
        return self.effort.rank

    @property
    def expected_cost_tokens(self) -> int:
        return len(self.prompt_token_ids) + self.expected_output_tokens


@dataclass(frozen=True)
class EngineOutput:
    """Tokens generated since the last output; `finish_reason` set on the last one. Times are
    the replica's, on the clock of its load reports, so a router can tell exactly whether a
    report already counts the request: `received_at` (on the first output) when the replica took
    it, `ended_at` (on the last) when it freed its seat. `cached_tokens` is what clients see as
    `usage.prompt_tokens_details.cached_tokens`. `report`, on a refusal (the only output, no
    tokens: the replica had no room, `router.engine_refuses`) and on the last output: the
    replica's load as it is then, fresher than any periodic report."""

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    received_at: float | None = None
    ended_at: float | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when the request asked
    cached_tokens: int | None = None  # on the first output: prompt tokens its prefix cache held
    refused: bool = False
    report: LoadReport | None = None
    # Not from the engine: the gateway's word that the replica is leaving (scale-down, rollout)
    # and the request outlived `engine.drain_grace_s` there (no tokens): it may move.
    draining: bool = False


@dataclass(frozen=True)
class LoadReport:
    """What an engine replica tells routers about itself (Ray Serve routing stats)."""

    running: int
    waiting: int
    kv_used_tokens: int
    kv_capacity_tokens: int
    outstanding_tokens: int
    max_num_seqs: int  # seats: requests the engine runs at once
    reported_at: float
    prefill_tokens: int = 0  # prompt tokens admitted and not computed yet (queued prefill work)
    cache_events: bool = False  # the replica relays its prefix cache's changes (`CacheDelta`)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class CacheDelta:
    """What changed in one engine replica's prefix cache, in `cluster.blocks` hashes, as the
    replica relays it to gateways. `reset`: the receiver drops what it knew of the replica's
    cache first (a snapshot for a new subscriber, or the engine cleared its cache)."""

    stored: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    reset: bool = False


@dataclass(frozen=True)
class DemandSignal:
    """What one gateway's scheduler knows about demand: the autoscaler's input. Live gateways
    report it as their Serve autoscaling metrics (`to_metrics`); the simulator hands it over."""

    offered_tokens_s: float
    queued_tokens: float
    waiting_requests: float  # a mean over Serve's look-back once it went through the metrics
    capacity_tokens_s: float | None = None  # its dispatch rate in tokens while saturated
    attainment: tuple[tuple[Effort, float], ...] = ()

    def to_metrics(self) -> dict[str, float]:
        """Flat floats, the shape of Serve's custom autoscaling metrics."""
        out = {
            "offered_tokens_s": self.offered_tokens_s,
            "queued_tokens": self.queued_tokens,
            "waiting_requests": self.waiting_requests,
        }
        if self.capacity_tokens_s is not None:
            out["capacity_tokens_s"] = self.capacity_tokens_s
        out |= {f"attainment_{effort.value}": met for effort, met in self.attainment}
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> DemandSignal:
        return cls(
            offered_tokens_s=metrics.get("offered_tokens_s", 0.0),
            queued_tokens=metrics.get("queued_tokens", 0.0),
            waiting_requests=metrics.get("waiting_requests", 0.0),
            capacity_tokens_s=metrics.get("capacity_tokens_s"),
            attainment=tuple(
                (e, metrics[key]) for e in Effort if (key := f"attainment_{e.value}") in metrics
            ),
        )


@dataclass(frozen=True)
class Admission:
    """The scheduler's answer for one request: where it runs and at which effort."""

    replica: str | None = None  # None: Serve's router picks
    effort: Effort | None = None  # set when the scheduler lowered the effort (degradation)
    ticket: Any = None  # the scheduler's handle, given back when the request ends


@dataclass(frozen=True)
class Release:
    """How a request left its replica, for the scheduler that placed it there."""

    output_tokens: int | None = None  # None: it did not run to the end
    first_output_at: float | None = None  # wall time of its first output; None: there was none
    ended_at: float | None = None  # the replica's time of freeing the seat, when it said
    replica_failed: bool = False  # the replica went away under it
    report: LoadReport | None = None  # the replica's load as the request left, when it said


class Overloaded(Exception):
    """Admission sheds the request (the router holds too many already): the gateway answers 429."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"overloaded, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineUnavailable(Exception):
    """The engine replica went away (died, restarted) while holding the request."""
