"""What an effort floor must cost: the capacity bound the overload benchmarks print beside it.

Under overload, the most requests any schedule can serve comes from serving the cheapest ones
first. Requiring every effort's served share of its offered requests to be at least `floor` times
the overall share forces some expensive (high-effort) requests in, and the cheapest schedule that
meets the requirement serves the mandated minimum of each effort and fills the rest cheapest
first. The gap between the two is the least goodput any floor of that level can cost, whatever
the scheduler: a cost measured near it is the arithmetic of the mix, not the mechanism's.
One resource, each request of an effort costing the same (the benchmarks use its median output
tokens: the decode time for which it holds a seat): a bound, not a simulation.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.contracts import Effort

FLOOR_GOAL = 0.5  # the benchmarks' criterion: no effort's served share under half the overall


def most_served(
    offered: Mapping[Effort, float],
    cost: Mapping[Effort, float],
    capacity: float,
    floor: float = 0.0,
) -> float:
    """The most requests (per second) `capacity` (cost units per second) can serve of
    `offered` (requests per second by effort) with each effort's served share at least
    `floor` times the overall share."""
    total = sum(offered.values())

    def needed(served: float) -> float:
        mandated = {e: floor * served * o / total for e, o in offered.items()}
        need, rest = sum(cost[e] * m for e, m in mandated.items()), served - sum(mandated.values())
        for e in sorted(offered, key=lambda e: cost[e]):
            take = min(rest, offered[e] - mandated[e])
            need, rest = need + cost[e] * take, rest - take
        return need

    low, high = 0.0, total
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if needed(mid) <= capacity else (low, mid)
    return low


def floor_cost_bound(
    mix: Mapping[Effort, float], cost: Mapping[Effort, float], load: float, floor: float
) -> float:
    """The least share of goodput a floor costs at `load` times the capacity (in cost), for
    an offered `mix` of efforts (shares of requests)."""
    offered_cost = sum(mix[e] * cost[e] for e in mix)
    capacity = offered_cost / load
    best = most_served(mix, cost, capacity)
    return 1 - most_served(mix, cost, capacity, floor) / best if best else 0.0
