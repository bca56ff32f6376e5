"""Every rule of the scheduling core, deterministic with an injected clock."""

import random
from collections import Counter
from dataclasses import replace

import pytest

from cluster.blocks import BLOCK_SIZE, segment_blocks
from cluster.config import ClusterConfig, RouterConfig
from cluster.contracts import Effort, LoadReport, SchedulingRequest
from cluster.scheduling.cost import CostModel, LengthSketch
from cluster.scheduling.drain import DrainRate
from cluster.scheduling.queue import SchedulingQueue, Ticket
from cluster.scheduling.scheduler import Admitted, Rejected, Scheduler, has_headroom

EFFORTS = ClusterConfig().efforts


def ask(rid, effort=Effort.LOW, tenant="t", prompt=100, max_tokens=1000, prefix="", tools=False):
    return SchedulingRequest(rid, effort, prompt, max_tokens, tenant, prefix, tools)


def ticket(rid, effort=Effort.LOW, tenant="a", prompt=100, out=200, at=0.0, prefix=""):
    deadline = at + EFFORTS[effort].ttft_slo_s
    return Ticket(ask(rid, effort, tenant, prompt, prefix=prefix), out, at, deadline)


def idle(capacity=1_000_000, at=0.0, running=0, waiting=0, kv=0, seats=100, outstanding=0):
    return LoadReport(running, waiting, kv, capacity, outstanding, seats, at)


# -- cost model ---------------------------------------------------------------------------


def test_cost_starts_from_the_effort_prior_then_learns():
    model = CostModel(EFFORTS, min_samples=10)
    prior_low = model.expected(ask("l", Effort.LOW, max_tokens=10**6))
    prior_high = model.expected(ask("h", Effort.HIGH, max_tokens=10**6))
    assert prior_high / prior_low == pytest.approx(20, rel=0.01)
    for _ in range(10):
        model.observe(ask("h", Effort.HIGH, "acme"), prior_high, 800)
    assert model.expected(ask("h", Effort.HIGH, "acme")) == 800
    assert model.expected(ask("h", Effort.HIGH, "other")) == 800  # effort-level fallback
    assert model.expected(ask("h", Effort.HIGH, "acme", max_tokens=300)) == 300
    assert model.prediction_error()[Effort.HIGH] > 1.0  # the prior was ~8x too long


def test_tool_replies_learn_separately():
    model = CostModel(EFFORTS, min_samples=5)
    for _ in range(5):
        model.observe(ask("m", Effort.MEDIUM, "a", tools=True), 1000, 40)
    assert model.expected(ask("m", Effort.MEDIUM, "a", max_tokens=10**6, tools=True)) == 40
    assert model.expected(ask("m", Effort.MEDIUM, "a", max_tokens=10**6)) > 1000


def test_length_sketch_quantiles():
    sketch = LengthSketch()
    for n in range(1, 1001):
        sketch.add(n)
    assert sketch.quantile(0.5) == pytest.approx(500, rel=0.1)
    assert sketch.quantile(0.99) == pytest.approx(990, rel=0.1)
    assert sketch.mean() == pytest.approx(500.5)


# -- queue discipline ---------------------------------------------------------------------


def test_short_low_effort_overtakes_a_long_high_effort_request():
    q = SchedulingQueue(cost_rate_tokens_s=2000)
    q.push(ticket("high", Effort.HIGH, out=6000, at=0.0))
    q.push(ticket("low", Effort.LOW, out=300, at=0.5))
    assert q.peek(1.0).request_id == "low"


def test_ageing_bounds_the_wait_no_starvation():
    q = SchedulingQueue(cost_rate_tokens_s=2000)
    high = ticket("high", Effort.HIGH, tenant="b", out=6000, at=0.0)
    q.push(high)
    # A steady stream of short requests: the high one runs once their keys pass its own.
    served_at = None
    for i in range(1, 200):
        now = i * 0.1
        q.push(ticket(f"l{i}", Effort.LOW, tenant="b", out=250, at=now))
        head = q.peek(now)
        q.pop(head, now)
        if head is high:
            served_at = now
            break
    assert served_at is not None
    assert served_at <= EFFORTS[Effort.HIGH].ttft_slo_s + 6000 / 2000 + 0.2


def test_heavy_tenant_yields_to_others_when_contended():
    q = SchedulingQueue(cost_rate_tokens_s=2000, fairness_horizon_s=10)
    for i in range(20):  # the heavy tenant has been served a lot
        q.push(ticket(f"h{i}", tenant="heavy", at=0.0))
        q.pop(q.peek(0.0), 0.0)
    q.push(ticket("heavy-next", tenant="heavy", at=1.0))
    q.push(ticket("light-next", tenant="light", at=1.5))  # arrives later
    assert q.peek(2.0).request_id == "light-next"


def test_ahead_counts_only_earlier_keys():
    q = SchedulingQueue(cost_rate_tokens_s=1000)
    q.push(ticket("a", out=100, at=0.0))
    q.push(ticket("b", Effort.HIGH, out=9000, at=0.0))
    assert q.ahead(q.key(ticket("c", out=100, at=0.1))) == 1
    assert q.queued_tokens == 200 + 9100


# -- placement ----------------------------------------------------------------------------


def scheduler(**router) -> Scheduler:
    return Scheduler(RouterConfig(**router), EFFORTS)


def test_late_binding_hands_out_only_what_fits_and_batches_on_reports():
    s = scheduler(engine_queue_limit=0)
    s.report("a", idle(running=2, seats=4))
    for i in range(5):
        assert isinstance(
            s.submit(s.ticket(ask(f"r{i}", Effort.LOW, "t", 100, 1000), 0.0), 0.0), Admitted
        )
    first = s.dispatch(0.0)
    assert [r for _, r in first] == ["a", "a"]  # two free seats
    assert s.dispatch(0.1) == []  # nothing more until the engine reports
    backlog = s.backlog_tokens()  # queued work plus work placed since the last report
    assert backlog == sum(t.cost_tokens for t, _ in first) + 3 * first[0][0].cost_tokens
    s.report("a", idle(running=1, at=0.2, seats=4))
    assert len(s.dispatch(0.3)) == 3  # one report releases a batch


def test_stale_report_plus_own_placements():
    s = scheduler(engine_queue_limit=10)
    s.report("a", idle(at=0.0, seats=100))
    s.report("b", idle(outstanding=1000))
    for i in range(4):
        s.submit(s.ticket(ask(f"r{i}", Effort.LOW, "t", 200, 1000), 1.0), 1.0)
    placed = [r for _, r in s.dispatch(1.0)]
    # a is empty by its report; two ~544-token placements later it holds more than b.
    assert placed[:2] == ["a", "a"] and "b" in placed


def test_without_late_binding_everything_is_placed_at_once_and_a_burst_spreads():
    # router.policy least_outstanding_tokens: no admission, no headroom, the same ledger.
    s = Scheduler(RouterConfig(max_queued_requests=2), EFFORTS, late_binding=False)
    s.report("a", idle(seats=2, running=2, waiting=5))  # full, and queueing already
    s.report("b", idle(seats=2, running=2, waiting=5))
    for i in range(6):  # beyond the queue cap and every seat: all admitted
        assert isinstance(s.submit(s.ticket(ask(f"r{i}"), 1.0), 1.0), Admitted)
        assert len(s.dispatch(1.0)) == 1  # placed at once
    placed = [t.request_id for _, t in s._replicas["a"].placed]
    assert len(placed) == 3 and s.rejected == 0  # the stale reports did not herd the burst


def test_kv_watermark_and_seats_gate_placement():
    s = scheduler(kv_watermark=0.5)
    s.report("a", idle(capacity=1000, kv=450, seats=8))
    s.submit(s.ticket(ask("big", Effort.LOW, "t", 100, 100), 0.0), 0.0)
    assert s.dispatch(0.0) == []
    s.report("a", idle(capacity=1000, kv=100, at=1.0, seats=8))
    assert len(s.dispatch(1.0)) == 1
    s.report("b", idle(capacity=0, seats=8))  # KV size not reported yet: seats decide
    s.submit(s.ticket(ask("next", Effort.LOW, "t", 100, 100), 1.0), 1.0)
    assert s.dispatch(1.0)[0][1] == "b"


@pytest.mark.parametrize(
    ("report", "what"),
    [(idle(running=97, seats=100), "seats"), (idle(capacity=1000, kv=895), "KV")],
)
def test_the_low_effort_reserve_keeps_the_last_seats_and_kv_for_short_requests(report, what):
    """Long requests stop where the reserve starts; a low-effort one still finds room there,
    and takes it ahead of a high-effort one queued earlier."""
    s = scheduler(kv_watermark=0.95, effort_reserve={Effort.MEDIUM: 0.05, Effort.HIGH: 0.05})
    s.report("a", report)
    s.submit(s.ticket(ask("high", Effort.HIGH, prompt=10), 0.0), 0.0)
    s.submit(s.ticket(ask("medium", Effort.MEDIUM, prompt=10), 0.0), 0.0)
    assert s.dispatch(0.0) == [], what
    s.submit(s.ticket(ask("low", Effort.LOW, prompt=10), 0.1), 0.1)
    assert [t.request_id for t, _ in s.dispatch(0.1)] == ["low"], what
    # Without a reserve the long ones run there too.
    s = scheduler(kv_watermark=0.95, effort_reserve={})
    s.report("a", report)
    s.submit(s.ticket(ask("high", Effort.HIGH, prompt=10), 0.0), 0.0)
    assert len(s.dispatch(0.0)) == 1, what


def test_placements_ahead_of_a_request_short_of_its_reserve_are_drain_evidence():
    """A low-effort request placed at once while a high-effort one waits only for its reserve
    took the room that reserve keeps: the drain rate counts it. A request admitted to keep its
    effort's share is owed room: the reserve does not hold it back."""
    s = scheduler(effort_reserve={Effort.HIGH: 0.05})
    s.report("a", idle(running=96, seats=100))
    s.submit(s.ticket(ask("high", Effort.HIGH, prompt=10), 0.0), 0.0)
    assert s.dispatch(0.0) == []
    for name in ("low", "low2"):
        s.queue.push(s.ticket(ask(name, Effort.LOW, prompt=10), 1.0))
        assert [t.request_id for t, _ in s.dispatch(1.0)] == [name]
    assert s.drain.rate(1.0) == pytest.approx(2.0)  # two dispatches in 1 s of backlog
    # Ahead of one that lacks more than its reserve (KV for a long prompt), they are not:
    # such a head says nothing of the room short requests find.
    other = scheduler(effort_reserve={Effort.HIGH: 0.05})
    other.report("a", idle(capacity=1000, kv=500))
    other.submit(other.ticket(ask("long", Effort.HIGH, prompt=500), 0.0), 0.0)
    for name in ("low", "low2"):
        other.queue.push(other.ticket(ask(name, Effort.LOW, prompt=10), 1.0))
        assert [t.request_id for t, _ in other.dispatch(1.0)] == [name]
    assert other.drain.rate(1.0) == pytest.approx(1.0)  # the stalled-backlog reading alone
    owed = s.ticket(ask("owed", Effort.HIGH, prompt=10), 1.0)
    owed = replace(owed, protected=True, deadline=2.0)  # as `submit` keys one it protects
    s.queue.push(owed)
    assert [t.request_id for t, _ in s.dispatch(1.0)] == ["owed"]


def prefix_placed(seats: int, **router) -> tuple[Scheduler, str]:
    """Replicas a and b; one request with a 4,096-token prefix placed on one of them, its home."""
    s = scheduler(engine_queue_limit=100, **router)
    s.report("a", idle(seats=seats))
    s.report("b", idle(seats=seats))
    s.submit(s.ticket(with_prefix("r0", 4096, 100), 0.0), 0.0)
    ((_, home),) = s.dispatch(0.0)
    return s, home


def with_prefix(rid: str, shared: int, own: int) -> SchedulingRequest:
    """A low-effort request whose prompt opens with `shared` tokens every such request has."""
    blocks = segment_blocks([("shared", shared), (rid, own)])
    return replace(ask(rid, prompt=shared + own), prefix_blocks=blocks)


def test_a_cached_prefix_draws_its_request_unless_more_prefill_waits_there():
    s, home = prefix_placed(100)
    other = "b" if home == "a" else "a"
    s.report(home, idle(running=1, outstanding=250, at=0.05))  # r0 prefilled, decoding
    s.submit(s.ticket(with_prefix("r1", 4096, 100), 0.1), 0.1)
    assert s.dispatch(0.1)[0][1] == home  # it would prefill 4,096 more tokens elsewhere
    # Far busier decoding: still home, its first token comes sooner there.
    s.report(home, idle(running=1, outstanding=50_000, at=0.2))
    s.report(other, idle(at=0.2))
    s.submit(s.ticket(with_prefix("r2", 4096, 100), 0.3), 0.3)
    assert s.dispatch(0.3)[0][1] == home
    # More prefill queued there than the cache saves: elsewhere.
    s.report(home, replace(idle(running=2, outstanding=5_000, at=0.4), prefill_tokens=4_500))
    s.submit(s.ticket(with_prefix("r3", 4096, 100), 0.5), 0.5)
    assert s.dispatch(0.5)[0][1] == other
    # Both hold it now; the index forgets a replica that leaves.
    assert set(s.prefix.matches(with_prefix("r4", 4096, 0).prefix_blocks)) == {"a", "b"}
    s.forget([other])
    assert set(s.prefix.matches(with_prefix("r4", 4096, 0).prefix_blocks)) == {other}


def test_a_cache_hit_may_wait_in_the_engine_a_cold_prompt_may_not():
    s = scheduler()  # no engine-side queue allowed
    s.report("a", idle())
    s.submit(s.ticket(with_prefix("r0", 4096, 100), 0.0), 0.0)
    assert len(s.dispatch(0.0)) == 1
    s.report("a", replace(idle(running=1, waiting=1, at=0.1), prefill_tokens=2_000))
    s.submit(s.ticket(with_prefix("hit", 4096, 100), 0.1), 0.1)
    assert [t.request_id for t, _ in s.dispatch(0.1)] == ["hit"]  # 100 tokens to prefill
    s.submit(s.ticket(ask("cold", prompt=500), 0.2), 0.2)
    assert s.dispatch(0.2) == []  # the engine queues: it waits here


def test_queued_prefill_holds_requests_in_our_queue():
    s = scheduler(prefill_queue_tokens=10_000)
    s.report("a", replace(idle(running=2), prefill_tokens=6_000))
    s.submit(s.ticket(ask("long", prompt=5_000), 0.0), 0.0)
    assert s.dispatch(0.0) == []  # 6,000 + 5,000 would pass the limit
    s.report("a", replace(idle(running=2, at=0.1), prefill_tokens=2_000))
    assert [t.request_id for t, _ in s.dispatch(0.1)] == ["long"]
    # With nothing queued in the engine, a prompt longer than the limit still goes.
    s.submit(s.ticket(ask("huge", prompt=50_000), 0.2), 0.2)
    s.report("a", idle(running=3, at=0.2))
    assert [t.request_id for t, _ in s.dispatch(0.2)] == ["huge"]


def test_placed_prefill_counts_until_the_next_report():
    s = scheduler(prefill_queue_tokens=10_000)
    s.report("a", idle())
    for i in range(4):
        s.submit(s.ticket(ask(f"r{i}", prompt=4_000), 0.0), 0.0)
    assert len(s.dispatch(0.0)) == 2  # a third would make 12,000 queued
    s.report("a", idle(running=2, at=0.1))  # both prefilled
    assert len(s.dispatch(0.1)) == 2


def test_a_finished_request_frees_its_seat_before_the_next_report():
    s = scheduler()
    s.report("a", idle(running=1, seats=2, at=0.0))
    for i in range(3):
        s.submit(s.ticket(ask(f"r{i}", Effort.LOW, "t", 100, 1000), 0.1), 0.1)
    ((first, _),) = s.dispatch(0.1)  # one free seat
    s.completed(first, "a", output_tokens=None, now=0.2)  # placed and done between reports
    ((second, _),) = s.dispatch(0.2)
    assert second is not first
    old = ticket("old", tenant="t")  # counted in the report's running
    s.completed(old, "a", output_tokens=None, now=0.3)
    assert len(s.dispatch(0.3)) == 1
    s.report("a", idle(running=2, seats=2, at=0.4))  # the report now covers all of that
    assert s.dispatch(0.5) == []


def test_the_replicas_own_times_say_which_report_counts_a_request():
    """A gateway hears of a finish or an arrival late (seconds, when its loop is busy): the
    replica's own timestamps, not the gateway's clock, decide whether a report counts it."""
    s = scheduler()
    s.report("a", idle(running=2, seats=2, at=10.0))
    done = ticket("done", tenant="t")
    s.completed(done, "a", output_tokens=None, now=12.0, ended_at=9.5)  # already free at 10.0
    s.submit(s.ticket(ask("r1", Effort.LOW, "t", 100, 1000), 12.0), 12.0)
    assert s.dispatch(12.0) == []  # counted free twice, this would overfill the replica
    s.completed(done, "a", output_tokens=None, now=12.1, ended_at=10.5)  # after the report
    ((placed, _),) = s.dispatch(12.1)
    # The replica took it at 12.3; a report made at 12.2 (before) leaves it out, whatever the
    # transit allowance says, and one made at 12.4 counts it.
    s.arrived(placed, "a", received_at=12.3)
    s.report("a", idle(running=1, seats=2, at=12.2))
    s.submit(s.ticket(ask("r2", Effort.LOW, "t", 100, 1000), 12.5), 12.5)
    assert s.dispatch(12.5) == []
    s.report("a", idle(running=1, seats=2, at=12.4))  # r1 in it, a seat free
    assert len(s.dispatch(12.6)) == 1


def test_gone_replicas_and_withdrawn_requests_are_forgotten():
    s, home = prefix_placed(1, admission_slack=100)
    s.forget(["b" if home == "a" else "a"])
    assert s.replicas == 1 and s.prefix.blocks(home) == 0
    waiting = s.ticket(ask("r1", Effort.LOW, "t", 100, 1000), 0.1)
    s.submit(waiting, 0.1)
    s.submit(s.ticket(ask("r2", Effort.LOW, "t", 100, 1000), 0.1), 0.1)
    s.withdraw(waiting, 0.15)  # its client left
    assert len(s.queue) == 1 and s.queue.peek(0.2).request_id == "r2"


def test_drain_rate_counts_only_time_when_requests_waited():
    drain = DrainRate(window_s=10.0)
    for t in range(8):  # a quiet spell: requests run on arrival, nothing waits
        drain.dispatched(float(t), waited=False)
    drain.backlogged(8.0, waiting=True)
    assert drain.rate(8.2) is None  # 0.2 s of waiting is no evidence yet
    for k in range(20):  # 20 waited dispatches over 2 s: the cluster drains 10/s
        drain.dispatched(8.0 + k * 0.1, waited=True, tokens=500)
    assert drain.rate(10.0) == pytest.approx(10.0)  # not 2/s over the whole window
    assert drain.token_rate(10.0) == pytest.approx(5_000.0)  # its capacity for this mix
    drain.backlogged(10.0, waiting=False)
    assert drain.rate(15.0) == pytest.approx(10.0)  # idle time after the backlog is not counted
    assert drain.rate(25.0) is None  # the evidence has left the window


def test_a_backlog_nothing_leaves_sinks_the_drain_rate_instead_of_hiding_it():
    """Seats and KV held by five-minute requests can stall the drain for longer than the window:
    no dispatch in it must read as a slow drain (shed), not as no evidence (admit everyone)."""
    drain = DrainRate(window_s=10.0)
    drain.backlogged(0.0, waiting=True)
    drain.dispatched(1.0, waited=True)
    assert drain.rate(2.0) == pytest.approx(0.5)
    assert drain.rate(12.0) == pytest.approx(0.1)  # the dispatch left the window: 1 per 10 s
    assert drain.rate(30.0) == pytest.approx(0.1)  # as slow as it gets within the window
    assert drain.token_rate(30.0) is None  # no mix seen: no capacity in tokens


# -- admission ----------------------------------------------------------------------------


def loaded(rate: float, queued: int, degrade=False) -> Scheduler:
    """A scheduler whose queue drained at `rate` requests/s over the last window and now
    holds `queued` earlier requests."""
    s = scheduler(degrade_effort=degrade, drain_rate_window_s=10.0)
    s.drain.backlogged(0.0, waiting=True)  # requests have waited all along
    for k in range(int(rate * 10)):
        s.drain.dispatched(k / rate, waited=True)
    for i in range(queued):
        s.queue.push(ticket(f"q{i}", Effort.LOW, out=300, at=-10.0))
    return s


def test_admission_sheds_with_retry_after_from_the_drain_time():
    s = loaded(rate=10.0, queued=30)  # 30 ahead at 10/s: 3.1 s > low's 1 s SLO
    decision = s.submit(s.ticket(ask("late", Effort.LOW, "t", 100, 1000), 10.0), 10.0)
    assert isinstance(decision, Rejected)
    assert decision.projected_wait_s == pytest.approx(3.1, rel=0.05)
    assert decision.retry_after_s == 3  # the queue drains in 30 / 10 s
    assert s.rejected == 1
    ok = loaded(rate=100.0, queued=30)  # the same queue, drained 10x faster: 0.31 s
    assert isinstance(
        ok.submit(ok.ticket(ask("x", Effort.LOW, "t", 100, 1000), 10.0), 10.0), Admitted
    )


def test_high_effort_waits_within_its_own_longer_slo():
    # 20 queued at 10/s: ~2 s, inside high's budget (half its 5 s SLO), far past low's.
    s = loaded(rate=10.0, queued=20)
    assert isinstance(
        s.submit(s.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0), 10.0), Admitted
    )
    s = loaded(rate=10.0, queued=20)
    assert isinstance(s.submit(s.ticket(ask("l", Effort.LOW, "t", 100, 300), 10.0), 10.0), Rejected)


def test_effort_degradation_before_shedding():
    # 70 queued at 10/s: 7 s, beyond high's 5 s SLO; at medium the request keys ahead of most
    # of them (its deadline is 3 s earlier) and fits medium's 2 s.
    s = loaded(rate=10.0, queued=0, degrade=True)
    for i in range(70):
        s.queue.push(ticket(f"q{i}", Effort.HIGH, out=300, at=9.0))
    decision = s.submit(s.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0), 10.0)
    assert isinstance(decision, Admitted)
    assert decision.degraded_from is Effort.HIGH and decision.ticket.effort is not Effort.HIGH
    assert s.degraded == 1
    plain = loaded(rate=10.0, queued=0)
    for i in range(70):
        plain.queue.push(ticket(f"q{i}", Effort.HIGH, out=300, at=9.0))
    assert isinstance(
        plain.submit(plain.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0), 10.0), Rejected
    )
    fixed = loaded(rate=10.0, queued=0, degrade=True)  # a raw prompt cannot be re-rendered
    for i in range(70):
        fixed.queue.push(ticket(f"q{i}", Effort.HIGH, out=300, at=9.0))
    h = fixed.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0)
    assert isinstance(fixed.submit(h, 10.0, degradable=False), Rejected)


def test_a_request_whose_prompt_the_cache_holds_is_shed_not_degraded():
    """Lowering its effort re-renders the prompt from the system message on: a 4,096-token
    cached prefix would be prefilled again to save a few hundred reply tokens."""

    def overloaded() -> Scheduler:
        s = loaded(rate=10.0, queued=0, degrade=True)
        for i in range(70):  # 7 s of highs ahead: past high's 5 s SLO, as above
            s.queue.push(ticket(f"q{i}", Effort.HIGH, out=300, at=9.0))
        return s

    def asked(rid: str, shared: int):
        return replace(with_prefix(rid, shared, 100), effort=Effort.HIGH, max_tokens=2_000)

    s = overloaded()
    s.prefix.placed("a", asked("earlier", 4096).prefix_blocks, 10_000)
    decision = s.submit(s.ticket(asked("warm", 4096), 10.0), 10.0)
    assert isinstance(decision, Rejected) and s.degraded == 0
    s = overloaded()  # a short cached prefix is worth less than the reply it shortens
    s.prefix.placed("a", asked("earlier", 64).prefix_blocks, 10_000)
    decision = s.submit(s.ticket(asked("warm", 64), 10.0), 10.0)
    assert isinstance(decision, Admitted) and decision.degraded_from is Effort.HIGH


def test_an_effort_shed_below_its_floor_is_admitted_ahead_of_later_arrivals():
    # Overload: the queue drains 10/s and holds 70 lows; lows are admitted one in two, and
    # every high so far was shed (its wait, past lows that key ahead, breaks its SLO).
    def overloaded(floor: float) -> Scheduler:
        s = loaded(rate=10.0, queued=70)
        s.shares.floor = floor
        for k in range(20):
            s.shares.offered(Effort.LOW, 9.0 + k * 0.05)
            if k % 2:
                s.shares.admitted(Effort.LOW, 9.0 + k * 0.05)
            s.shares.offered(Effort.HIGH, 9.0 + k * 0.05)
        return s

    s = overloaded(floor=0.5)
    high = s.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0)
    decision = s.submit(high, 10.0)
    assert isinstance(decision, Admitted) and decision.ticket.protected
    later = ticket("later", Effort.LOW, out=10, at=10.1)
    assert s.queue.key(decision.ticket) < s.queue.key(later)  # ahead of all later arrivals
    # High's ratio is now 1/21 against the overall 11/41: under half of it, so owed for three
    # more; then 4/25 = 0.16 is over half of 14/45 and high is shed again.
    more = [s.submit(s.ticket(ask(f"h{k}", Effort.HIGH), 10.0), 10.0) for k in range(5)]
    assert [isinstance(d, Admitted) for d in more] == [True, True, True, False, False]
    # Without a floor, SLO alone decides: shed.
    plain = overloaded(floor=0.0)
    assert isinstance(plain.submit(plain.ticket(ask("h", Effort.HIGH), 10.0), 10.0), Rejected)


def test_projected_wait_counts_later_arrivals_that_will_key_ahead():
    s = loaded(rate=10.0, queued=5)
    # Low-effort requests have been arriving at 20/s; their keys sit ~1.2 s after arrival.
    for k in range(200):
        s._note_admission(ticket(f"l{k}", Effort.LOW, at=k * 0.05), k * 0.05)
    high = s.ticket(ask("h", Effort.HIGH, "t", 100, 30_000), 10.0)
    low = s.ticket(ask("l", Effort.LOW, "t", 100, 1000), 10.0)
    # The high one waits for the queue plus ~20/s of lows over its ~7 s of extra key.
    assert s.projected_wait_s(high, 10.0) > 10 * s.projected_wait_s(low, 10.0)


# -- many gateways ------------------------------------------------------------------------


def test_a_refused_request_queues_again_in_its_place_and_its_replica_waits_for_news():
    s = Scheduler(RouterConfig(), EFFORTS, engine_refuses=True, gateways=4)
    s.report("a", idle(running=98, seats=100))  # two seats free, as far as this gateway knows
    first, second = s.ticket(ask("first"), 0.0), s.ticket(ask("second"), 0.0)
    s.submit(first, 0.0)
    s.submit(second, 0.0)
    assert [(t.request_id, r) for t, r in s.dispatch(1.0)] == [("first", "a"), ("second", "a")]
    # Another gateway took both seats since the report: the engine says so as it refuses.
    s.refused(first, "a", idle(running=100, seats=100, at=1.01), 1.01)
    s.refused(second, "a", idle(running=100, seats=100, at=1.01), 1.01)
    assert s.queue.peek(1.01) is first  # in its place, ahead of anything that came after it
    s.submit(s.ticket(ask("third"), 1.02), 1.02)
    assert s.dispatch(1.02) == []  # the refusal stands until a newer report or a freed seat
    s.report("a", idle(running=99, seats=100, at=1.5))
    assert [t.request_id for t, _ in s.dispatch(1.5)] == ["first"]


def test_gateways_assume_the_others_placed_as_much_and_spread_on_stale_reports():
    """One report, many gateways: the least loaded replica is everyone's choice until the next
    report. Two random choices weighted by G x own placements spread a burst over the replicas."""
    s = Scheduler(RouterConfig(), EFFORTS, engine_refuses=True, gateways=16)
    for r in "abcd":
        s.report(r, idle(outstanding=0 if r == "a" else 5_000))
    for i in range(8):
        s.submit(s.ticket(ask(f"r{i}"), 0.0), 0.0)
    placed = [r for _, r in s.dispatch(0.0)]
    assert len(placed) == 8 and placed.count("a") < 8 and len(set(placed)) >= 3


def test_the_engines_own_test_ignores_its_queue_between_steps_but_not_its_seats():
    router = RouterConfig(engine_queue_limit=0)
    queued = idle(running=10, waiting=3, seats=100)  # taken since its step began
    assert not has_headroom(queued, 0, 0, 100, router, prefill=100)  # a gateway: it is full
    assert has_headroom(queued, 0, 0, 100, router, prefill=100, engine_side=True)
    full = idle(running=97, waiting=3, seats=100)
    assert not has_headroom(full, 0, 0, 100, router, engine_side=True)
    # Prefill drains faster than reports come: where engines refuse, it is theirs to judge.
    router = RouterConfig(prefill_queue_tokens=1_000)
    prefilling = replace(idle(running=10, seats=100), prefill_tokens=5_000)
    assert not has_headroom(prefilling, 0, 0, 100, router, prefill=100)
    assert has_headroom(prefilling, 0, 0, 100, router, prefill=100, engine_arbitrates=True)
    assert not has_headroom(full, 0, 0, 100, router, prefill=100, engine_arbitrates=True)


# -- placement at scale -------------------------------------------------------------------


def _scan(s: Scheduler, t: Ticket) -> tuple[str, int] | None:
    """The placement rule as a scan of every replica: the least (prefill ahead, load) with
    headroom, ties to the replica reported first."""
    prompt, depth = t.prompt_tokens, s.prefix.matches(t.request.prefix_blocks)
    reserve = s.config.effort_reserve.get(t.effort, 0.0)
    best, best_cost = None, None
    for replica, state in s._replicas.items():
        uncached = prompt - max(min(depth.get(replica, 0) * BLOCK_SIZE, prompt - 1), 0)
        ahead = state.report.prefill_tokens + state.placed_prefill + uncached if depth else 0
        cost = (ahead, state.report.outstanding_tokens + state.placed_cost)
        fits = state.headroom(t, s.config, uncached, reserve, s.engine_refuses)
        if fits and (best_cost is None or cost < best_cost):
            best, best_cost = (replica, uncached), cost
    return best


@pytest.mark.parametrize("seed", range(5))
def test_placement_reads_replicas_cheapest_first_yet_picks_what_a_scan_of_all_picks(seed):
    """Replicas are kept in order as reports, placements, refusals and finishes change their
    load, so a decision stops at the first fit; the choice is the full scan's, ties included."""
    rng = random.Random(seed)
    s = Scheduler(RouterConfig(prefill_queue_tokens=8_000), EFFORTS)
    shared = [rng.randint(64, 4_096) for _ in range(4)]
    now, placed = 0.0, []
    for step in range(400):
        now += 0.01
        replica = f"e{rng.randrange(24)}"
        event = rng.random()
        if event < 0.25 or replica not in s:
            report = LoadReport(
                running=rng.randrange(8),
                waiting=rng.randrange(2),
                kv_used_tokens=rng.randrange(50_000),
                kv_capacity_tokens=60_000,
                outstanding_tokens=rng.choice((0, 1_000, rng.randrange(20_000))),  # ties
                max_num_seqs=8,
                reported_at=now,
                prefill_tokens=rng.choice((0, rng.randrange(6_000))),
            )
            s.report(replica, report)
        elif event < 0.3 and placed:
            t, where = placed.pop(rng.randrange(len(placed)))
            s.refused(t, where, s._replicas[where].report, now)
            s.queue.remove(t)
        elif event < 0.45 and placed:
            t, where = placed.pop(rng.randrange(len(placed)))
            s.completed(t, where, None, now, ended_at=now)
        elif event < 0.5:
            s.forget(r for r in list(s._replicas) if r != replica)
            s.report(replica, idle(at=now))
        head = rng.choice(shared)
        request = with_prefix(f"q{step}", head, rng.randint(1, 2_000))
        if rng.random() < 0.3:
            request = replace(request, prefix_blocks=())  # nothing cached to look up
        t = s.ticket(replace(request, effort=rng.choice(list(Effort))), now)
        assert s._place(t) == _scan(s, t), step
        s.submit(t, now)
        placed += [(t, r) for t, r in s.dispatch(now)]


def test_two_choices_among_many_replicas_stay_uniform_over_those_with_room():
    """With many gateways each draws two replicas with room, in a random order it draws only
    as far as it needs: every replica with room is drawn alike, a full one never."""
    s = Scheduler(RouterConfig(), EFFORTS, gateways=8)
    for k in range(256):
        s.report(k, idle(running=100 if k % 4 else 0, seats=100))  # 64 of them have room
    picks = Counter(s._place(ticket(f"r{i}"))[0] for i in range(6_400))
    assert set(picks) <= set(range(0, 256, 4)) and len(picks) == 64
    assert max(picks.values()) < 3 * min(picks.values())
