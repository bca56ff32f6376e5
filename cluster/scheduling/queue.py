"""Queue discipline: deadline plus expected cost, per-tenant fairness, no starvation.

Each request's key is fixed when it arrives: its TTFT deadline (arrival + the effort's SLO) plus its
expected cost in seconds (`cost_tokens / cost_rate`). Earlier keys go first, so a short low-effort
request overtakes a long high-effort one that arrived just before it, but a key is an absolute time:
once later arrivals' keys pass it, it runs. That is the ageing, and the bound on any request's extra
wait. Tenants whose recent share of dispatched tokens exceeds an equal share wait a little longer
(token-weighted fairness), so one API key cannot fill the cluster.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from cluster.contracts import Effort, SchedulingRequest


@dataclass(frozen=True)
class Ticket:
    """A request in the scheduler's hands: the request, its expected output and its deadline."""

    request: SchedulingRequest
    expected_output_tokens: int
    arrival: float
    deadline: float
    payload: Any = field(default=None, compare=False)  # the caller's own handle (the simulator)
    # Admitted to keep its effort's share under overload (`EffortShares`): keyed by the
    # shortest TTFT SLO and no cost, it goes ahead of every request that arrives after it, or
    # it would be served past its SLO.
    protected: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def effort(self) -> Effort:
        return self.request.effort

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    @property
    def prefix_key(self) -> str:
        return self.request.prefix_key

    @property
    def tools(self) -> bool:
        return self.request.tools

    @property
    def cost_tokens(self) -> int:
        return self.request.prompt_tokens + self.expected_output_tokens


@dataclass
class _TenantUsage:
    tokens: float = 0.0
    at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> float:
        return self.tokens * 0.5 ** ((now - self.at) / half_life_s)


@dataclass
class SchedulingQueue:
    cost_rate_tokens_s: float = 2_000.0
    fairness_horizon_s: float = 10.0
    usage_half_life_s: float = 30.0
    _lanes: dict[str, list] = field(default_factory=dict)  # tenant -> heap of (key, seq, ticket)
    _usage: dict[str, _TenantUsage] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=itertools.count)
    _size: int = 0
    _tokens: int = 0

    def __len__(self) -> int:
        return self._size

    @property
    def queued_tokens(self) -> int:
        return self._tokens

    def key(self, ticket: Ticket) -> float:
        if ticket.protected:  # its deadline is the most urgent any arrival can have
            return ticket.deadline
        return ticket.deadline + ticket.cost_tokens / self.cost_rate_tokens_s

    def push(self, ticket: Ticket) -> None:
        lane = self._lanes.setdefault(ticket.tenant, [])
        heapq.heappush(lane, (self.key(ticket), next(self._seq), ticket))
        self._size += 1
        self._tokens += ticket.cost_tokens

    def _penalties(self, now: float) -> dict[str, float]:
        """Seconds added to each tenant's keys in proportion to its excess share of the tokens
        recently dispatched among the tenants now waiting."""
        active = list(self._lanes)
        if len(active) < 2:
            return {}
        used = {t: u.decayed(now, self.usage_half_life_s) for t, u in self._usage.items()}
        total = sum(used.get(t, 0.0) for t in active)
        if total <= 0:
            return {}
        fair = 1 / len(active)
        return {
            t: max(0.0, used.get(t, 0.0) / total - fair) * self.fairness_horizon_s for t in active
        }

    def effective_key(self, ticket: Ticket, now: float) -> float:
        """The key `ticket` competes with now, fairness penalty included."""
        return self.key(ticket) + self._penalties(now).get(ticket.tenant, 0.0)

    def peek(self, now: float) -> Ticket | None:
        penalties = self._penalties(now)
        best, best_key = None, math.inf
        for tenant, lane in self._lanes.items():
            if (k := lane[0][0] + penalties.get(tenant, 0.0)) < best_key:
                best, best_key = lane[0][2], k
        return best

    def pop(self, ticket: Ticket, now: float) -> None:
        """Remove `ticket` (the one `peek` returned) and charge its tenant."""
        lane = self._lanes[ticket.tenant]
        _, _, popped = heapq.heappop(lane)
        assert popped is ticket
        if not lane:
            del self._lanes[ticket.tenant]
        self._size -= 1
        self._tokens -= ticket.cost_tokens
        usage = self._usage.setdefault(ticket.tenant, _TenantUsage())
        usage.tokens = usage.decayed(now, self.usage_half_life_s) + ticket.cost_tokens
        usage.at = now

    def remove(self, ticket: Ticket) -> None:
        """Take a queued ticket out wherever it is (its caller left); no tenant is charged."""
        lane = self._lanes.get(ticket.tenant, [])
        index = next((i for i, entry in enumerate(lane) if entry[2] is ticket), None)
        if index is None:
            return
        lane[index] = lane[-1]
        lane.pop()
        heapq.heapify(lane)
        if not lane:
            del self._lanes[ticket.tenant]
        self._size -= 1
        self._tokens -= ticket.cost_tokens

    def depth_by_effort(self) -> dict[Effort, int]:
        depth = dict.fromkeys(Effort, 0)
        for lane in self._lanes.values():
            for _, _, ticket in lane:
                depth[ticket.effort] += 1
        return depth

    def ahead(self, key: float) -> int:
        """Queued requests whose key is earlier than `key` (fairness penalties ignored)."""
        return sum(1 for lane in self._lanes.values() for k, _, _ in lane if k <= key)
