"""The capacity bound on an effort floor's cost (`cluster.bench.fairness`)."""

import pytest

from cluster.bench.fairness import floor_cost_bound, most_served
from cluster.contracts import Effort

MIX = {Effort.LOW: 0.5, Effort.MEDIUM: 0.35, Effort.HIGH: 0.15}
COST = {Effort.LOW: 1.0, Effort.MEDIUM: 4.8, Effort.HIGH: 20.0}  # the reference mix's outputs
OFFERED_COST = 0.5 + 0.35 * 4.8 + 0.15 * 20  # 5.18


def test_without_a_floor_the_cheapest_go_first():
    # A third of the offered cost: every low request, then 0.2556 of 0.35 medium ones.
    assert most_served(MIX, COST, OFFERED_COST / 3) == pytest.approx(0.5 + 1.227 / 4.8, abs=1e-3)
    assert most_served(MIX, COST, OFFERED_COST) == pytest.approx(1.0)  # room for all


def test_a_floor_serves_each_effort_its_minimum_then_the_cheapest():
    # Served N with half the overall share each: 0.075 N high, 0.175 N medium, 0.25 N low
    # (cost 2.59 N), the other 0.5 N low: 3.09 N = 5.18 / 3 at N = 0.5588.
    assert most_served(MIX, COST, OFFERED_COST / 3, 0.5) == pytest.approx(0.5588, abs=1e-3)
    assert floor_cost_bound(MIX, COST, 3.0, 0.5) == pytest.approx(1 - 0.5588 / 0.7556, abs=2e-3)
    # The dearer the floor, the more it costs; none costs nothing; no overload costs nothing.
    assert floor_cost_bound(MIX, COST, 3.0, 0.0) == 0.0
    assert floor_cost_bound(MIX, COST, 2.0, 0.5) < floor_cost_bound(MIX, COST, 3.0, 0.5)
    assert floor_cost_bound(MIX, COST, 1.0, 0.5) == pytest.approx(0.0, abs=1e-9)
