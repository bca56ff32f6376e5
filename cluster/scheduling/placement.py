"""Stateless placement: where a request goes when the scheduler named no replica.

The gateway's scheduler decides placement (it holds the only ledger of work placed since each
replica's last report). Serve's router falls back on this for requests without a choice (before the
first load report) and for the rest of its order when the chosen replica refuses. Reports are stale
between two broadcasts, so a plain least-loaded choice would send a whole burst to the replica that
looked emptiest: two replicas drawn at random, the less loaded first, spread it (Serve's own power
of two choices, ranked by reported tokens instead of probed queue lengths). Pure: the caller passes
the random source.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from cluster.contracts import LoadReport


@dataclass(frozen=True)
class ReplicaEstimate:
    replica: Hashable
    outstanding_tokens: int
    running: int

    @classmethod
    def of(cls, replica: Hashable, report: LoadReport | None) -> ReplicaEstimate:
        if report is None:  # a replica that has not reported yet: nothing known against it
            return cls(replica, 0, 0)
        return cls(replica, report.outstanding_tokens, report.running + report.waiting)


def _load(r: ReplicaEstimate) -> tuple[int, int]:
    return r.outstanding_tokens, r.running


def power_of_two(replicas: Sequence[ReplicaEstimate], rng: random.Random) -> list[Hashable]:
    """Replicas in order of preference: the less loaded of two random draws, the other, then
    the rest from least to most reported work (prompt + expected output tokens)."""
    drawn = sorted(rng.sample(list(replicas), min(2, len(replicas))), key=_load)
    rest = sorted((r for r in replicas if r not in drawn), key=_load)
    return [r.replica for r in drawn + rest]
