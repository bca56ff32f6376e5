"""Placement: which engine replica should take a request, from load reports plus local knowledge.

Load reports arrive every `load_report_period_s` and are stale in between, so each router keeps a
ledger of what it placed itself and has not seen finish: work placed after a replica's last report
is added to that report, so a burst between two reports does not pile onto the replica that looked
emptiest. Pure: the caller passes the clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cluster.contracts import LoadReport


@dataclass(frozen=True)
class Placement:
    request_id: str
    cost_tokens: int
    placed_at: float


@dataclass(frozen=True)
class ReplicaEstimate:
    replica: Hashable
    outstanding_tokens: int
    running: int


class PlacementPolicy(Protocol):
    def rank(self, cost_tokens: int, replicas: Sequence[ReplicaEstimate]) -> list[Hashable]:
        """Replicas in order of preference for a request of this cost."""


class LeastOutstandingTokens:
    """Prefer the replica with the fewest tokens still to process (prompt + expected output)."""

    def rank(self, cost_tokens: int, replicas: Sequence[ReplicaEstimate]) -> list[Hashable]:
        ordered = sorted(replicas, key=lambda r: (r.outstanding_tokens, r.running))
        return [r.replica for r in ordered]


@dataclass
class PlacementLedger:
    """Per-router record of in-flight placements, merged with each replica's latest report."""

    _inflight: dict[Hashable, dict[str, Placement]] = field(default_factory=dict)
    _where: dict[str, Hashable] = field(default_factory=dict)

    def placed(self, replica: Hashable, request_id: str, cost_tokens: int, now: float) -> None:
        self._inflight.setdefault(replica, {})[request_id] = Placement(request_id, cost_tokens, now)
        self._where[request_id] = replica

    def completed(self, request_id: str) -> None:
        replica = self._where.pop(request_id, None)
        if replica is not None:
            self._inflight[replica].pop(request_id, None)

    def forget_replicas(self, alive: Iterable[Hashable]) -> None:
        keep = set(alive)
        for replica in [r for r in self._inflight if r not in keep]:
            for request_id in self._inflight.pop(replica):
                self._where.pop(request_id, None)

    def estimate(self, replica: Hashable, report: LoadReport | None) -> ReplicaEstimate:
        mine = self._inflight.get(replica, {}).values()
        if report is None:
            return ReplicaEstimate(replica, sum(p.cost_tokens for p in mine), len(mine))
        unseen = [p for p in mine if p.placed_at > report.reported_at]
        return ReplicaEstimate(
            replica,
            report.outstanding_tokens + sum(p.cost_tokens for p in unseen),
            report.running + report.waiting + len(unseen),
        )

    def estimates(self, reports: Mapping[Hashable, LoadReport | None]) -> list[ReplicaEstimate]:
        return [self.estimate(replica, report) for replica, report in reports.items()]
