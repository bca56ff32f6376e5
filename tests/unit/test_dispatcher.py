"""The gateway's asyncio shell around the scheduler, with a fake clock (no Ray)."""

import asyncio
import threading

import pytest

from cluster.contracts import (
    Admission,
    Effort,
    EngineRequest,
    LoadReport,
    Overloaded,
    Release,
    SamplingParams,
    SchedulingRequest,
)
from cluster.serve.dispatcher import Dispatcher
from tests.helpers import fast_config


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def request(rid, effort=Effort.LOW):
    return EngineRequest(rid, [1] * 50, SamplingParams(500), effort, 200)


def report(seats, running=0, at=100.0):
    return LoadReport(running, 0, 0, 10**6, 0, seats, at)


def dispatcher(**router) -> tuple[Dispatcher, Clock]:
    clock = Clock()
    return Dispatcher(fast_config(router=router), clock), clock


async def admit(d, rid, effort=Effort.LOW, degradable=True):
    return await d.admit(SchedulingRequest(rid, effort, 50, 500, "t", "p"), degradable)


async def one_waiting(d) -> asyncio.Task:
    """One replica with one seat, taken by r0; r1 waits for it in the gateway."""
    d.publish({"a": report(seats=1)})
    await admit(d, "r0")
    waiting = asyncio.create_task(admit(d, "r1"))
    await asyncio.sleep(0)
    return waiting


async def test_without_reports_requests_pass_to_serves_router():
    d, _ = dispatcher()
    assert await admit(d, "r0") == Admission()


async def test_requests_wait_for_a_seat_and_a_release_hands_it_on():
    d, clock = dispatcher()
    d.publish({"a": report(seats=1)})
    first = await admit(d, "r0")
    assert first.replica == "a" and first.ticket is not None
    second = asyncio.create_task(admit(d, "r1"))
    await asyncio.sleep(0)
    assert not second.done()  # the only seat is taken; the request waits in the gateway
    clock.now += 0.5
    d.release(
        first, Release(180, first_output_at=clock.now - 0.4)
    )  # frees the seat before any report
    assert (await asyncio.wait_for(second, 1)).replica == "a"
    assert d.scheduler.cost.prediction_error()  # the true length was learned


async def test_a_client_that_leaves_while_queued_is_withdrawn():
    d, _ = dispatcher()
    waiting = await one_waiting(d)
    assert len(d.scheduler.queue) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(d.scheduler.queue) == 0


async def test_reports_from_the_router_thread_wake_waiting_requests():
    d, clock = dispatcher()
    waiting = await one_waiting(d)
    clock.now += 1.0
    fresh = {"a": report(seats=1, at=clock.now)}  # r0 finished on the engine
    threading.Thread(target=d.publish, args=(fresh,)).start()
    assert (await asyncio.wait_for(waiting, 1)).replica == "a"


async def test_when_every_replica_is_gone_waiters_fall_back_to_serve():
    d, _ = dispatcher()
    waiting = await one_waiting(d)
    d.publish({})
    assert (await asyncio.wait_for(waiting, 1)).replica is None


async def test_overload_sheds_and_degradation_is_reported():
    d, _ = dispatcher(max_queued_requests=1)
    d.publish({"a": report(seats=1)})
    await admit(d, "r0")
    queued = asyncio.create_task(admit(d, "r1"))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as shed:
        await admit(d, "r2")
    assert shed.value.retry_after_s >= 1
    queued.cancel()
    d, clock = dispatcher(degrade_effort=True, drain_rate_window_s=10.0, admission_slack=1.0)
    d.publish({"a": report(seats=1)})
    running = await admit(d, "h0", Effort.HIGH)
    d.scheduler.drain.backlogged(clock.now - 10, waiting=True)  # 10 s of waiting, 1 req/s
    for k in range(10):
        d.scheduler.drain.dispatched(clock.now - 9.5 + k, waited=True)
    waiting = []
    for i in range(8):  # at 1/s, high's 5 s SLO is soon out of reach: later ones are lowered
        waiting.append(asyncio.create_task(admit(d, f"h{i + 1}", Effort.HIGH)))
        await asyncio.sleep(0)
    assert d.scheduler.degraded >= 1 and d.scheduler.rejected == 0
    with pytest.raises(Overloaded):  # a raw prompt cannot be re-rendered: shed instead
        await admit(d, "raw", Effort.HIGH, degradable=False)
    d.release(running, Release())
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    assert done.pop().result().effort in (Effort.MEDIUM, Effort.LOW)  # lowered ones key first
    for task in waiting:
        task.cancel()


async def test_the_gateway_demand_signal_counts_offered_work_and_attainment():
    d, clock = dispatcher()
    d.publish({"a": report(seats=2)})
    first = await admit(d, "r0")
    # prompt + expected output, per second over the 30 s window
    assert d.demand().offered_tokens_s == pytest.approx(first.ticket.cost_tokens / 30)
    clock.now += 2.0
    d.release(first, Release(180, first_output_at=clock.now - 1.9))  # TTFT 0.1 s, ITL ~10 ms: met
    second = await admit(d, "r1")
    clock.now += 5.0
    d.release(
        second, Release(100, first_output_at=clock.now - 0.1)
    )  # TTFT 4.9 s > low's 1 s: missed
    signal = d.demand()
    assert dict(signal.attainment) == {Effort.LOW: 0.5}
    assert signal.queued_tokens == 0 and signal.waiting_requests == 0


async def test_a_client_that_leaves_just_after_placement_gives_its_seat_back():
    d, clock = dispatcher()
    waiting = await one_waiting(d)
    clock.now += 1.0
    d.publish({"a": report(seats=1, at=clock.now)})  # r0 done: the seat goes to r1 at once...
    d._refresh()
    assert waiting.done() is False and d.scheduler.queue.peek(clock.now) is None
    waiting.cancel()  # ...whose client leaves before its task resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting
    third = await asyncio.wait_for(admit(d, "r2"), 1)  # the seat was handed back
    assert third.replica == "a"


async def test_a_failed_replica_gets_nothing_until_a_newer_report():
    d, _ = dispatcher()
    d.publish({"a": report(seats=4, at=100.0), "b": report(seats=4, at=100.0)})
    first = await admit(d, "r0")
    d.release(first, Release(replica_failed=True))
    survivor = "b" if first.replica == "a" else "a"
    for i in range(3):  # the cached reports still list the failed one: it stays out
        assert (await admit(d, f"r{i + 1}")).replica == survivor
    assert d.scheduler.replicas == 1
    d.publish({"a": report(seats=4, at=101.0), "b": report(seats=4, at=101.0)})
    await admit(d, "s0")  # applies the broadcast
    assert d.scheduler.replicas == 2  # a newer report shows it alive: back in placement


async def test_a_refused_request_waits_again_in_its_place_until_the_replica_has_room():
    d, clock = dispatcher()
    d.publish({"a": report(seats=2)})
    first = await admit(d, "r0")
    later = asyncio.create_task(admit(d, "r1"))
    await asyncio.sleep(0)
    second = await asyncio.wait_for(later, 1)
    assert second.replica == "a"
    d.arrived(second, clock.now + 0.005)  # r1 runs there: a report from then on counts it
    clock.now += 0.01
    # Another gateway took both seats: the engine refuses r0 and says so.
    again = asyncio.create_task(d.readmit(first, report(seats=2, running=2, at=clock.now)))
    await asyncio.sleep(0)
    assert not again.done() and d.scheduler.queue.peek(clock.now) is first.ticket
    clock.now += 0.5
    d.publish({"a": report(seats=2, running=1, at=clock.now)})
    readmitted = await asyncio.wait_for(again, 1)
    assert readmitted.replica == "a" and readmitted.ticket is first.ticket


async def test_the_report_a_last_reply_carries_counts_before_serves_next_one():
    d, clock = dispatcher()
    d.publish({"a": report(seats=1)})
    first = await admit(d, "r0")
    waiting = asyncio.create_task(admit(d, "r1"))
    await asyncio.sleep(0)
    clock.now += 1.0
    fresh = report(seats=1, running=0, at=clock.now)
    d.release(first, Release(180, clock.now - 0.5, ended_at=clock.now - 0.01, report=fresh))
    assert (await asyncio.wait_for(waiting, 1)).replica == "a"
    assert d.scheduler._replicas["a"].report is fresh
    d.publish({"a": report(seats=1, running=1, at=clock.now - 0.2)})  # older: nothing new
    assert d.scheduler._replicas["a"].report is fresh


async def test_a_reply_whose_replica_failed_resumes_ahead_of_later_arrivals_and_is_never_shed():
    d, clock = dispatcher(max_queued_requests=2)
    d.publish({"a": report(seats=1), "b": report(seats=1)})
    first, other = await admit(d, "r0"), await admit(d, "r1")
    later = [asyncio.create_task(admit(d, f"r{i}")) for i in (2, 3)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):  # the queue is full: new arrivals are shed
        await admit(d, "r4")
    clock.now += 1.0
    d.release(first, Release(replica_failed=True))
    continuation = SchedulingRequest("r0", Effort.LOW, 50 + 120, 380, "t", "p")
    resumed = asyncio.create_task(d.resume(first, continuation))
    await asyncio.sleep(0)
    assert d.scheduler.queue.peek(clock.now).request is continuation  # ahead of r2, r3
    d.release(other, Release(200, first_output_at=clock.now - 0.5))  # b's seat frees
    placed = await asyncio.wait_for(resumed, 1)
    assert placed.replica == other.replica and placed.ticket.request is continuation
    assert placed.ticket.expected_output_tokens == max(first.ticket.expected_output_tokens - 120, 1)
    assert not any(task.done() for task in later)
    for task in later:
        task.cancel()
