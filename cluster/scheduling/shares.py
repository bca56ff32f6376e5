"""A floor under each effort's share of admission, so shedding by SLO cannot lock one out.

Under overload, admission sheds whatever would wait past its SLO, and the queue's order (deadline
plus expected cost) makes a long high-effort request wait the longest: left alone, at 3x capacity
high effort is almost never admitted, and a team whose work is high-effort is locked out whenever
the cluster is busy. So each effort is owed at least `floor` times the overall admission ratio
(admitted over offered, the last `window_s`); a request of an effort below it is admitted anyway
and keyed as the most urgent request arriving with it would be, ahead of every later arrival
(`Ticket.protected`), so it is served within its SLO rather than queued past it, while requests
admitted before it keep their place. Above the floor, goodput decides. Pure: every call takes
`now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.contracts import Effort
from cluster.scheduling.sliding import SlidingSum

SHARE_WINDOW_S = 30.0


@dataclass
class EffortShares:
    floor: float  # of the overall admission ratio; 0: no floor
    window_s: float = SHARE_WINDOW_S
    _offered: dict[Effort, SlidingSum] = field(default_factory=dict)
    _admitted: dict[Effort, SlidingSum] = field(default_factory=dict)

    def offered(self, effort: Effort, now: float) -> None:
        self._offered.setdefault(effort, SlidingSum(self.window_s)).add(now, 1)

    def admitted(self, effort: Effort, now: float) -> None:
        self._admitted.setdefault(effort, SlidingSum(self.window_s)).add(now, 1)

    def owed(self, effort: Effort, now: float) -> bool:
        """Is `effort` admitted less than `floor` times the overall ratio (so its next request
        must be admitted)?"""
        if not self.floor or effort not in self._offered:
            return False
        offered = {e: s.rate(now) for e, s in self._offered.items()}
        admitted = {e: s.rate(now) for e, s in self._admitted.items()}
        overall = sum(admitted.values()) / sum(offered.values())
        return admitted.get(effort, 0.0) / offered[effort] < self.floor * overall
