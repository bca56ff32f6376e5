"""The effort-aware scheduler: admission, queue discipline and late-binding placement together.

Late binding is the point: once a request sits in vLLM's own queue it is served first come, first
served and cannot move, so the scheduler keeps the queue and hands a replica only what it can run
now. On every load report (and on arrivals) it releases a batch: the best queued request goes to a
replica with headroom (a free seat, KV below the watermark, little prefill queued: prefill
saturates long before seats on agentic traffic; no engine-side queue unless the request is a cache
hit there). Where some replica caches its prefix (`PrefixIndex`), it goes where its first token
comes soonest, the least prefill ahead of it, so a conversation's next turn goes back to its
history unless more prefill waits there than the history saves; else to the least load. Pure:
every call takes `now`.

With `late_binding` off (`router.policy: least_outstanding_tokens`, the peers' way and our
baseline) it admits everything and places each request at once on the replica with the least
outstanding tokens, headroom or not: the engine's own queue holds the overflow. The same ledger
of work placed since each report serves both, so placement is decided in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cluster.blocks import BLOCK_SIZE
from cluster.config import EffortProfile, RouterConfig
from cluster.contracts import (
    CacheDelta,
    DemandSignal,
    Effort,
    LoadReport,
    SchedulingRequest,
)
from cluster.scheduling.cost import CostModel
from cluster.scheduling.drain import DrainRate
from cluster.scheduling.load_order import LoadOrder
from cluster.scheduling.prefix_index import PrefixIndex
from cluster.scheduling.queue import SchedulingQueue, Ticket
from cluster.scheduling.shares import EffortShares
from cluster.scheduling.sliding import SlidingSum

OFFERED_WINDOW_S = 30.0  # as Ray Serve's autoscaling look-back


# A request placed within this long of its arrival never waited (live, the clock moves between
# submitting and dispatching in the same call): its dispatch says nothing about capacity.
IMMEDIATE_S = 0.001


@dataclass(frozen=True)
class Admitted:
    ticket: Ticket
    degraded_from: Effort | None = None


@dataclass(frozen=True)
class Rejected:
    retry_after_s: int
    projected_wait_s: float


def has_headroom(
    report: LoadReport,
    placed: int,
    placed_prompt_tokens: int,
    prompt_tokens: int,
    config: RouterConfig,
    *,
    placed_prefill: int = 0,
    prefill: int = 0,
    reserve: float = 0.0,
    engine_side: bool = False,
    engine_arbitrates: bool = False,
) -> bool:
    """Can a replica run one more request now? A free seat after what was placed since its
    report, KV under the watermark, the prompt tokens still to compute there (the request's own
    uncached `prefill` included) within `prefill_queue_tokens`, and no engine-side queue, except
    for a request whose prefix that replica caches: waiting in vLLM with seats free is waiting
    for a step's token budget, and a cache hit needs little of it. Late binding hinges on this
    rule. `reserve`: the share of seats and KV the request must leave free (for shorter ones).
    `engine_side`: the engine's own test on its exact state before it takes a request, which
    knows whether it has a seat: what waits in its queue until the next step is no sign that
    it is full. `engine_arbitrates`: the engine refuses what it has no seat or prefill room
    for, so prefill is its to judge on its exact state, not a report's (late, and blind to what
    other gateways placed since: prefill drains in milliseconds, reports come every period);
    seats still count, else every gateway would hand a full engine its whole queue."""
    if report.running + report.waiting + placed >= report.max_num_seqs * (1 - reserve):
        return False
    if not engine_arbitrates:
        budget, queued = config.prefill_queue_tokens, report.prefill_tokens + placed_prefill
        if budget and queued and queued + prefill > budget:  # prefill saturates: wait here
            return False
        hit = bool(budget) and prefill < prompt_tokens  # cached there: a step from its first
        if report.waiting > config.engine_queue_limit and not hit and not engine_side:
            return False  # the engine queues: it is full
    if not report.kv_capacity_tokens:  # not known yet (an engine that has not stepped)
        return True
    kv_limit = report.kv_capacity_tokens * (config.kv_watermark - reserve)
    return report.kv_used_tokens + placed_prompt_tokens + prompt_tokens <= kv_limit


@dataclass
class _Replica:
    """A replica's last report plus what this scheduler knows happened since: requests it
    placed there (not in the report yet) and requests that finished there (still in it)."""

    report: LoadReport
    # (time placed, ticket); `received` holds the replica's own time of taking a ticket once
    # its first output said so (exact), else the placement time plus the transit allowance holds.
    placed: list[tuple[float, Ticket]] = field(default_factory=list)
    received: dict[str, float] = field(default_factory=dict)  # by request id
    # (time, exact): exact when the replica said when it freed the seat (its own clock).
    finished: list[tuple[float, bool]] = field(default_factory=list)
    uncached: dict[str, int] = field(default_factory=dict)  # placed prompt tokens not cached
    placed_prompt: int = 0
    placed_prefill: int = 0
    placed_cost: int = 0
    # The report the replica refused a request with: nothing goes there until a newer report
    # or a seat seen free (its prefix cache may hold less than the index thinks).
    refused_at: float | None = None

    def place(self, ticket: Ticket, now: float, uncached: int) -> None:
        self.placed.append((now, ticket))
        self.uncached[ticket.request_id] = uncached
        self.placed_prompt += ticket.prompt_tokens
        self.placed_prefill += uncached
        self.placed_cost += ticket.cost_tokens

    def arrived(self, ticket: Ticket, received_at: float) -> None:
        if not any(placed is ticket for _, placed in self.placed):
            return
        if received_at <= self.report.reported_at:  # the last report already counts it
            self._unplace(ticket)
        else:
            self.received[ticket.request_id] = received_at

    def _unplace(self, ticket: Ticket) -> None:
        self.placed = [(at, t) for at, t in self.placed if t is not ticket]
        self.received.pop(ticket.request_id, None)
        self.placed_prompt -= ticket.prompt_tokens
        self.placed_prefill -= self.uncached.pop(ticket.request_id)
        self.placed_cost -= ticket.cost_tokens

    def refuse(self, ticket: Ticket, report: LoadReport, transit_s: float) -> float | None:
        """The replica turned `ticket` down, saying `report`; when it had been placed."""
        placed_at = next((at for at, placed in self.placed if placed is ticket), None)
        if placed_at is not None:
            self._unplace(ticket)
        if report.reported_at >= self.report.reported_at:
            self.refresh(report, transit_s)
        self.refused_at = report.reported_at
        return placed_at

    def finish(self, ticket: Ticket, now: float, ended_at: float | None = None) -> None:
        self.refused_at = None
        if any(placed is ticket for _, placed in self.placed):
            self._unplace(ticket)  # placed and done between two reports: it was never counted
        elif ended_at is None:
            self.finished.append((now, False))
        elif ended_at > self.report.reported_at:  # else the last report already counts it free
            self.finished.append((ended_at, True))

    def refresh(self, report: LoadReport, transit_s: float) -> None:
        self.report = report
        if self.refused_at is not None and report.reported_at > self.refused_at:
            self.refused_at = None
        # A request the replica took after the report is not in it; one placed just before the
        # report may still be on its way to the engine (until its first output says).
        self.placed = [
            (at, t)
            for at, t in self.placed
            if (
                self.received[t.request_id] > report.reported_at
                if t.request_id in self.received
                else at > report.reported_at - transit_s
            )
        ]
        kept = {t.request_id for _, t in self.placed}
        self.received = {r: at for r, at in self.received.items() if r in kept}
        self.uncached = {r: n for r, n in self.uncached.items() if r in kept}
        # A finish the replica timed is in the report exactly when it came first; one seen just
        # after the report may already be in it (its last output was in flight): keep counting
        # only the ones the report cannot have seen.
        self.finished = [
            (at, exact)
            for at, exact in self.finished
            if at > report.reported_at + (0.0 if exact else transit_s)
        ]
        self.placed_prompt = sum(t.prompt_tokens for _, t in self.placed)
        self.placed_prefill = sum(self.uncached.values())
        self.placed_cost = sum(t.cost_tokens for _, t in self.placed)

    def headroom(
        self, ticket: Ticket, config: RouterConfig, uncached: int, reserve: float, arbiter: bool
    ) -> bool:
        if self.refused_at is not None:
            return False
        seats_taken = len(self.placed) - len(self.finished)
        return has_headroom(
            self.report,
            seats_taken,
            self.placed_prompt,
            ticket.prompt_tokens,
            config,
            placed_prefill=self.placed_prefill,
            prefill=uncached,
            reserve=reserve,
            engine_arbitrates=arbiter,
        )

    def load_tokens(self) -> int:
        return self.report.outstanding_tokens + self.placed_cost


@dataclass
class Scheduler:
    config: RouterConfig
    efforts: Mapping[Effort, EffortProfile]
    cost: CostModel = None  # type: ignore[assignment]
    queue: SchedulingQueue = None  # type: ignore[assignment]
    _replicas: dict[Hashable, _Replica] = field(default_factory=dict)
    _order: LoadOrder = field(default_factory=LoadOrder)  # the replicas, cheapest first
    prefix: PrefixIndex = field(default_factory=PrefixIndex)
    drain: DrainRate = None  # type: ignore[assignment]
    # Tokens (prompt + expected output) of every request offered, admitted or not: demand.
    offered: SlidingSum = None  # type: ignore[assignment]
    # How long a placed request may take to reach its engine: placements this close before a
    # report still count on top of it (briefly counted twice, never missed).
    transit_s: float = 0.0
    late_binding: bool = True
    # Engines refuse what they have no seat for (and say how they are): placement counts on
    # that instead of on seats that a report, late and blind to other gateways, says are taken.
    engine_refuses: bool = False
    # Gateways placing on the same engines, this one included: each sees only its own
    # placements between two reports, and assumes the others placed as much (else every
    # gateway sends the same least loaded replica everything until the next report).
    gateways: int = 1
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # two choices
    # Per effort: recent admissions and the mean key offset (key - arrival), to foresee arrivals
    # that will sort ahead of a waiting request.
    _admitted: dict[Effort, SlidingSum] = field(default_factory=dict)
    _key_offset: dict[Effort, float] = field(default_factory=dict)
    shares: EffortShares = None  # type: ignore[assignment]
    admitted: int = 0
    rejected: int = 0
    degraded: int = 0

    def __post_init__(self) -> None:
        self.cost = self.cost or CostModel(self.efforts)
        self.queue = self.queue or SchedulingQueue(
            cost_rate_tokens_s=self.config.cost_rate_tokens_s
        )
        self.drain = self.drain or DrainRate(self.config.drain_rate_window_s)
        self.offered = self.offered or SlidingSum(OFFERED_WINDOW_S)
        self.shares = self.shares or EffortShares(self.config.min_effort_share)

    # -- admission -------------------------------------------------------------------------

    def ticket(self, request: SchedulingRequest, now: float, payload: Any = None) -> Ticket:
        """The request as it arrives at `now`: its expected output and its TTFT deadline."""
        return Ticket(
            request=request,
            expected_output_tokens=self.cost.expected(request),
            arrival=now,
            deadline=now + self.efforts[request.effort].ttft_slo_s,
            payload=payload,
        )

    def _note_admission(self, ticket: Ticket, now: float) -> None:
        window = self.config.drain_rate_window_s
        admitted = self._admitted.setdefault(ticket.effort, SlidingSum(window))
        admitted.add(now, 1)
        admitted.rate(now)  # trims: memory stays bounded at any load
        offset = self.queue.key(ticket) - ticket.arrival
        previous = self._key_offset.get(ticket.effort, offset)
        self._key_offset[ticket.effort] = previous + 0.05 * (offset - previous)

    def projected_wait_s(self, ticket: Ticket, now: float) -> float:
        """Time until the requests that will run before `ticket` leave the queue: those queued
        with earlier keys now, plus the expected later arrivals whose keys will still be earlier
        (a low-effort request arriving 3 s from now still precedes a high-effort one queued now)."""
        if not self.queue:
            return 0.0
        rate = self.drain.rate(now)
        if rate is None:  # requests have not waited long enough to measure the drain rate
            return 0.0
        key = self.queue.effective_key(ticket, now)
        jumpers = sum(
            admitted.rate(now) * max(0.0, key - now - self._key_offset.get(effort, 0.0))
            for effort, admitted in self._admitted.items()
            if effort != ticket.effort
        )
        return (self.queue.ahead(key) + jumpers + 1) / rate

    def submit(self, ticket: Ticket, now: float, degradable: bool = True) -> Admitted | Rejected:
        """Queue the request; if it would wait past its SLO, admit it ahead of later arrivals
        when its effort is owed its share (`EffortShares`), else degrade its effort (if
        configured and the caller can re-render it at a lower effort), or shed it with a
        Retry-After."""
        self.offered.add(now, ticket.cost_tokens)
        self.shares.offered(ticket.effort, now)
        if not self.late_binding:  # push: the engine's queue takes whatever comes
            return self._admit(ticket, now)
        candidate, degraded_from = ticket, None
        full = 0 <= self.config.max_queued_requests <= len(self.queue)
        while True:
            wait = self.projected_wait_s(candidate, now)
            budget = self.efforts[candidate.effort].ttft_slo_s * self.config.admission_slack
            if not full and (wait <= budget or len(self.queue) == 0):
                return self._admit(candidate, now, degraded_from)
            if candidate is ticket and not full and self.shares.owed(ticket.effort, now):
                urgent = ticket.arrival + min(p.ttft_slo_s for p in self.efforts.values())
                return self._admit(replace(ticket, protected=True, deadline=urgent), now)
            lower = candidate.effort.lower if self.config.degrade_effort and degradable else None
            if lower is None:
                break
            # Re-rendered at the lower effort, its blocks change from the system message on: it
            # loses what the prefix cache holds of its prompt, and is worth lowering only if the
            # shorter reply saves more tokens than that (else agentic turns, long cached prompts
            # with short replies, would trade a little decode for a full prefill, and the extra
            # prefill would lengthen the waits that lower the next ones).
            request = replace(candidate.request, effort=lower, prefix_blocks=())
            expected = self.cost.expected(request)
            if ticket.expected_output_tokens - expected < self._cached_tokens(ticket):
                break
            degraded_from = degraded_from or ticket.effort
            candidate = replace(
                candidate,
                request=request,
                expected_output_tokens=expected,
                deadline=ticket.arrival + self.efforts[lower].ttft_slo_s,
            )
        self.rejected += 1
        rate = self.drain.rate(now)
        drain_s = len(self.queue) / rate if rate else self.config.retry_after_s
        return Rejected(min(max(1, math.ceil(drain_s)), 120), wait)

    def _cached_tokens(self, ticket: Ticket) -> int:
        """The most of the ticket's prompt any replica's prefix cache holds (as far as we know)."""
        depth = self.prefix.matches(ticket.request.prefix_blocks)
        return max(depth.values(), default=0) * BLOCK_SIZE

    def _admit(self, ticket: Ticket, now: float, degraded_from: Effort | None = None) -> Admitted:
        self._note_admission(ticket, now)
        self.shares.admitted(degraded_from or ticket.effort, now)  # the effort it asked for
        self.queue.push(ticket)
        if self.late_binding:
            self.drain.backlogged(now, waiting=True)
        self.admitted += 1
        self.degraded += degraded_from is not None
        return Admitted(ticket, degraded_from)

    # -- placement -------------------------------------------------------------------------

    def report(self, replica: Hashable, report: LoadReport) -> None:
        """A fresh load report: what was placed before it is now inside it. One older than the
        replica's last (a reply carried a newer one) says nothing new."""
        state = self._replicas.get(replica)
        if state is None:
            self._replicas[replica] = _Replica(report)
        elif report.reported_at >= state.report.reported_at:
            state.refresh(report, self.transit_s)
        self._reorder(replica)

    def forget(self, alive: Iterable[Hashable]) -> None:
        """Drop replicas that are gone (died, scaled down): nothing more is placed there."""
        keep = set(alive)
        for replica in [r for r in self._replicas if r not in keep]:
            del self._replicas[replica]
            self._order.remove(replica)
            self.prefix.forget(replica)

    def cache_changed(self, replica: Hashable, delta: CacheDelta) -> None:
        """The replica's engine said what its prefix cache stored and evicted (KV events): the
        index follows it, where before it only guessed from placements."""
        if replica not in self._replicas:  # gone, or not reported yet: nothing to place there
            return
        if delta.reset:
            self.prefix.forget(replica)
        self.prefix.stored(replica, delta.stored)
        self.prefix.removed(replica, delta.removed)

    def observed(self, replica: Hashable, blocks: tuple[int, ...]) -> None:
        """Another gateway placed a prompt of these blocks there (what the engine's KV events
        will say it stored)."""
        if blocks and (state := self._replicas.get(replica)) is not None:
            self.prefix.placed(replica, blocks, state.report.kv_capacity_tokens // BLOCK_SIZE)

    def drop(self, replica: Hashable) -> None:
        """One replica is leaving (draining before scale-down): place nothing more there."""
        self.forget(r for r in self._replicas if r != replica)

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    def __contains__(self, replica: Hashable) -> bool:
        return replica in self._replicas

    def withdraw(self, ticket: Ticket, now: float) -> None:
        """The caller left while its request was queued (client disconnect)."""
        self.queue.remove(ticket)
        self.drain.backlogged(now, waiting=bool(self.queue))

    def dispatch(self, now: float) -> list[tuple[Ticket, Hashable]]:
        """Release every queued request some replica can run now, best first."""
        out, blocked = [], None
        while (ticket := self.queue.peek(now)) is not None:
            placement = self._place(ticket)
            if placement is None:
                blocked = ticket
                break
            replica, uncached = placement
            self.queue.pop(ticket, now)
            self._replicas[replica].place(ticket, now, uncached)
            self._reorder(replica)
            self.observed(replica, ticket.request.prefix_blocks)
            out.append((ticket, replica))
        # A request that waited took room under contention: what capacity lets through. So did
        # one placed at once ahead of a request that lacks only its effort's reserve: else a
        # queue held by one such request reads as a drain of nearly nothing.
        reserved = (  # looked up only when something was placed
            bool(out) and blocked is not None and self._place(blocked, reserve=0.0) is not None
        )
        for ticket, _ in out:
            waited = reserved or now - ticket.arrival > IMMEDIATE_S
            self.drain.dispatched(now, waited=waited, tokens=ticket.cost_tokens)
        self.drain.backlogged(now, waiting=bool(self.queue))
        return out

    def _place(self, ticket: Ticket, reserve: float | None = None) -> tuple[Hashable, int] | None:
        """The replica to run `ticket` and the prompt tokens it will compute there. Late
        binding: among replicas with headroom, where some cache its prefix, the least prefill
        ahead of its first token (what the replica still has to prefill plus the prompt its
        cache lacks), then the least load; else the least load. Push: the least load, headroom
        or not. `reserve` overrides the share of room the request must leave free."""
        prompt = ticket.prompt_tokens
        depth = self.prefix.matches(ticket.request.prefix_blocks) if self.late_binding else {}
        if reserve is None:  # one admitted to keep its effort's share is owed room: none
            reserve = (
                0.0 if ticket.protected else self.config.effort_reserve.get(ticket.effort, 0.0)
            )
        if self.gateways > 1 and not depth:
            return self._two_choices(ticket, reserve)

        def fits(state: _Replica, uncached: int) -> bool:
            return not self.late_binding or state.headroom(
                ticket, self.config, uncached, reserve, self.engine_refuses
            )

        cold = prompt - max(min(0, prompt - 1), 0)  # computed where nothing is cached
        if not depth:
            return next(
                ((r, cold) for r in self._order.by_load() if fits(self._replicas[r], cold)), None
            )
        best, best_cost = None, None  # cost: (prefill ahead, load, rank)
        for replica, blocks in depth.items():  # the few that cache part of its prompt
            if (state := self._replicas.get(replica)) is None:
                continue
            uncached = prompt - max(min(blocks * BLOCK_SIZE, prompt - 1), 0)
            prefill = state.report.prefill_tokens + state.placed_prefill
            cost = (prefill + uncached, self._load(state), self._order.rank(replica))
            if (best_cost is None or cost < best_cost) and fits(state, uncached):
                best, best_cost = (replica, uncached), cost
        for prefill, load, rank, replica in self._order.by_prefill():  # the rest, cold
            cost = (prefill + cold, load, rank)
            if best_cost is not None and cost >= best_cost:
                break  # in order: none after it beats the best
            if replica not in depth and fits(self._replicas[replica], cold):
                return replica, cold
        return best

    def _reorder(self, replica: Hashable) -> None:
        """The replica's place in the order after its report or its placed work changed."""
        state = self._replicas[replica]
        prefill = state.report.prefill_tokens + state.placed_prefill
        self._order.update(replica, prefill, self._load(state))

    def _load(self, state: _Replica) -> int:
        """Tokens a replica holds: what its report says, plus what was placed there since by
        this gateway and (as it assumes) as much by each of the others."""
        return state.report.outstanding_tokens + self.gateways * state.placed_cost

    def _two_choices(self, ticket: Ticket, reserve: float) -> tuple[Hashable, int] | None:
        """Of two replicas with headroom drawn at random, the less loaded. Several gateways
        share each report, so the least loaded replica is every gateway's choice until the next
        one, and they herd there; two random choices are robust to stale load (Mitzenmacher)."""
        prompt = ticket.prompt_tokens
        replicas, pair = list(self._replicas), []
        for i in range(len(replicas)):  # a random order, drawn only as far as two fit
            j = self.rng.randrange(i, len(replicas))
            replicas[i], replicas[j] = replicas[j], replicas[i]
            state = self._replicas[replicas[i]]
            if not self.late_binding or state.headroom(
                ticket, self.config, prompt, reserve, self.engine_refuses
            ):
                pair.append((replicas[i], state))
                if len(pair) == 2:
                    break
        if not pair:
            return None
        return min(pair, key=lambda rs: self._load(rs[1]))[0], prompt

    # -- feedback --------------------------------------------------------------------------

    def refused(self, ticket: Ticket, replica: Hashable, report: LoadReport, now: float) -> None:
        """The replica turned `ticket` down, with its fresh `report`: another gateway took the
        room since the last report. It queues again under its own key (its place in the order),
        and did not drain."""
        placed_at = None
        if (state := self._replicas.get(replica)) is not None:
            placed_at = state.refuse(ticket, report, self.transit_s)
            self._reorder(replica)
        self.queue.push(ticket)
        if placed_at is not None:
            self.drain.returned(placed_at, ticket.cost_tokens)
        self.drain.backlogged(now, waiting=True)

    def resumed(self, ticket: Ticket, now: float) -> None:
        """A running request whose replica failed queues again as its continuation, admitted
        already (no shedding: its client is mid-reply)."""
        self.queue.push(ticket)
        self.drain.backlogged(now, waiting=True)

    def arrived(self, ticket: Ticket, replica: Hashable, received_at: float) -> None:
        """The replica took `ticket` at `received_at` (its clock): a report from that time on
        counts it, an earlier one does not, whatever the transit took."""
        if (state := self._replicas.get(replica)) is not None:
            state.arrived(ticket, received_at)
            self._reorder(replica)

    def completed(
        self,
        ticket: Ticket,
        replica: Hashable,
        output_tokens: int | None,
        now: float,
        ended_at: float | None = None,
    ) -> None:
        """A request left its replica: its seat is free before the next report says so. If it
        ran to the end (`output_tokens` known), its true length teaches the cost model.
        `ended_at` (the replica's clock) says exactly which reports already count it free."""
        if (state := self._replicas.get(replica)) is not None:
            state.finish(ticket, now, ended_at)
            self._reorder(replica)
        if output_tokens is not None:
            self.cost.observe(ticket.request, ticket.expected_output_tokens, output_tokens)

    def queued_tokens(self) -> int:
        return self.queue.queued_tokens

    def demand(self, now: float, attainment: Mapping[Effort, float]) -> DemandSignal:
        """Demand as this scheduler sees it, for the autoscaler (`attainment`: recent SLO
        attainment by effort, which the caller judges)."""
        return DemandSignal(
            offered_tokens_s=self.offered.rate(now),
            queued_tokens=self.queued_tokens(),
            waiting_requests=len(self.queue),
            capacity_tokens_s=self.drain.token_rate(now),
            attainment=tuple(attainment.items()),
        )

    def backlog_tokens(self) -> int:
        """Projected token backlog: queued work plus work engines still hold (autoscaling)."""
        return self.queue.queued_tokens + sum(s.load_tokens() for s in self._replicas.values())
