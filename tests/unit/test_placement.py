import random
from collections import Counter

from cluster.contracts import LoadReport
from cluster.scheduling.placement import ReplicaEstimate, power_of_two


def report(outstanding, running=1, waiting=0):
    return LoadReport(
        running=running,
        waiting=waiting,
        kv_used_tokens=0,
        kv_capacity_tokens=1000,
        outstanding_tokens=outstanding,
        max_num_seqs=16,
        reported_at=0.0,
    )


def test_an_estimate_counts_queued_requests_and_nothing_for_a_silent_replica():
    assert ReplicaEstimate.of("a", report(500, running=2, waiting=3)) == ReplicaEstimate(
        "a", 500, 5
    )
    assert ReplicaEstimate.of("b", None) == ReplicaEstimate("b", 0, 0)


def test_the_less_loaded_of_the_two_draws_leads_then_least_work_then_fewest_running():
    replicas = [
        ReplicaEstimate("a", 500, 1),
        ReplicaEstimate("b", 100, 9),
        ReplicaEstimate("c", 100, 2),
    ]
    rng = random.Random(0)
    for _ in range(20):
        order = power_of_two(replicas, rng)
        assert sorted(order) == ["a", "b", "c"]
        drawn = order[:2]
        load = {r.replica: (r.outstanding_tokens, r.running) for r in replicas}
        assert load[drawn[0]] <= load[drawn[1]]
    assert power_of_two(replicas[:2], rng) == ["b", "a"]  # two replicas: both are drawn


def test_a_burst_between_two_reports_spreads_over_equally_reported_replicas():
    # The reports stay the same for the whole burst (stale): a least-loaded choice would put
    # every request on one replica.
    replicas = [ReplicaEstimate(name, 0, 0) for name in "abcd"]
    rng = random.Random(1)
    firsts = Counter(power_of_two(replicas, rng)[0] for _ in range(400))
    assert set(firsts) == set("abcd") and min(firsts.values()) > 50


def test_one_or_no_replica():
    assert power_of_two([ReplicaEstimate("a", 9, 9)], random.Random(0)) == ["a"]
    assert power_of_two([], random.Random(0)) == []
