from cluster.contracts import LoadReport
from cluster.scheduling.placement import LeastOutstandingTokens, PlacementLedger, ReplicaEstimate


def report(outstanding, at, running=1):
    return LoadReport(
        running=running,
        waiting=0,
        kv_used_tokens=0,
        kv_capacity_tokens=1000,
        outstanding_tokens=outstanding,
        max_num_seqs=16,
        reported_at=at,
    )


def test_least_outstanding_tokens_orders_by_work_then_running():
    replicas = [
        ReplicaEstimate("a", 500, 1),
        ReplicaEstimate("b", 100, 9),
        ReplicaEstimate("c", 100, 2),
    ]
    assert LeastOutstandingTokens().rank(10, replicas) == ["c", "b", "a"]


def test_placements_after_a_report_count_until_the_next_one():
    ledger = PlacementLedger()
    ledger.placed("a", "r1", 300, now=10.0)
    stale = ledger.estimate("a", report(100, at=9.0))
    assert stale.outstanding_tokens == 400 and stale.running == 2
    fresh = ledger.estimate("a", report(350, at=10.5))
    assert fresh.outstanding_tokens == 350  # the report already includes r1


def test_burst_between_reports_spreads_over_replicas():
    ledger, policy = PlacementLedger(), LeastOutstandingTokens()
    reports = {"a": report(0, at=0.0), "b": report(0, at=0.0)}
    chosen = []
    for i in range(6):
        best = policy.rank(100, ledger.estimates(reports))[0]
        ledger.placed(best, f"r{i}", 100, now=1.0 + i)
        chosen.append(best)
    assert chosen.count("a") == chosen.count("b") == 3


def test_completion_and_dead_replicas_are_forgotten():
    ledger = PlacementLedger()
    ledger.placed("a", "r1", 300, now=1.0)
    ledger.placed("b", "r2", 200, now=1.0)
    ledger.completed("r1")
    assert ledger.estimate("a", None).outstanding_tokens == 0
    ledger.forget_replicas(["a"])
    assert ledger.estimate("b", None).outstanding_tokens == 0
    ledger.completed("r2")  # late completion of a forgotten replica's request is harmless
