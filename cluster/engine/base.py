"""The engine interface the gateway talks to, whatever runs behind it (mock or vLLM).

Input is harmony token ids rendered by the gateway; output is token ids the gateway parses, so
every engine shares one rendering and parsing path. Values cross Ray as plain dataclasses.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Literal

from cluster.config import Effort
from cluster.scheduling.autoscaling import GatewaySignal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    effort: Effort
    expected_output_tokens: int = 0  # the router's prior for this request's output length
    # vLLM priority (lower runs first; used with `scheduling_policy: priority`): the effort rank,
    # so requests that do wait inside an engine keep the router's low-before-high order.
    priority: int = 0
    # The engine replica the gateway's scheduler chose (a Serve replica id); None lets Serve's
    # router pick, as before the first load report arrives.
    replica: str | None = None
    # The dispatching gateway's demand signal, which the engine reports for autoscaling.
    gateway: GatewaySignal | None = None

    @property
    def expected_cost_tokens(self) -> int:
        return len(self.prompt_token_ids) + self.expected_output_tokens


@dataclass(frozen=True)
class EngineOutput:
    """Tokens generated since the last output; `finish_reason` set on the last one. Times are
    the replica's, on the clock of its load reports, so a router can tell exactly whether a
    report already counts the request: `received_at` (on the first output) when the replica took
    it, `ended_at` (on the last) when it freed its seat."""

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    received_at: float | None = None
    ended_at: float | None = None


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

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class Engine(abc.ABC):
    """An inference engine replica: streams token ids, aborts on cancellation, reports load."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs; closing the iterator early aborts the request and frees its capacity."""

    @abc.abstractmethod
    def load_report(self) -> LoadReport: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
