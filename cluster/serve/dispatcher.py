"""Each gateway's asyncio shell around the pure `Scheduler`: requests wait here, in effort-aware
order, until the scheduler hands them a replica that can run them now (late binding).

Load reports come from Ray Serve's router for the engine deployment (its routing stats, on the
router's own event loop thread) through `publish`; everything else runs on the gateway's loop.
Until the first report arrives, and whenever no replica is known, requests pass straight to
Serve's router, so a cold cluster never deadlocks on missing reports. Engines that relay their
prefix cache's events feed the scheduler's prefix index through `CacheFeeds`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from cluster.config import ClusterConfig
from cluster.contracts import (
    Admission,
    CacheDelta,
    DemandSignal,
    Effort,
    LoadReport,
    Overloaded,
    Release,
    SchedulingRequest,
)
from cluster.metrics import RouterMetrics
from cluster.scheduling.autoscaling import Attainment
from cluster.scheduling.queue import Ticket
from cluster.scheduling.scheduler import Rejected, Scheduler
from cluster.serve.cache_feeds import CacheFeeds

# Gateway -> Serve router -> engine replica, generously: a busy gateway's event loop delays the
# hop by hundreds of milliseconds. It only covers placements whose first output has not come back
# yet (and aborted requests): the rest are timed exactly by the replica's own clock.
TRANSIT_S = 1.0

ReportListener = Callable[[Mapping[str, LoadReport]], None]
ReplicaListener = Callable[[Iterable[str]], None]
_listeners: dict[tuple[str, str], ReportListener] = {}  # (app, deployment) -> listener
_replica_listeners: dict[tuple[str, str], ReplicaListener] = {}


def subscribe_load_reports(app_name: str, deployment: str, listener: ReportListener) -> None:
    """Have `listener` hear every broadcast of the deployment's replica load reports."""
    _listeners[app_name, deployment] = listener


def publish_load_reports(app_name: str, deployment: str, reports: Mapping[str, LoadReport]) -> None:
    """Called by Serve's router in this process (on its own thread) with reports by replica id."""
    if (listener := _listeners.get((app_name, deployment))) is not None:
        listener(reports)


def subscribe_replicas(app_name: str, deployment: str, listener: ReplicaListener) -> None:
    """Have `listener` hear the ids of the deployment's running replicas on every change."""
    _replica_listeners[app_name, deployment] = listener


def publish_replicas(app_name: str, deployment: str, replicas: Iterable[str]) -> None:
    """Called by Serve's router in this process (on its own thread) with its replica set."""
    if (listener := _replica_listeners.get((app_name, deployment))) is not None:
        listener(replicas)


@dataclass
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[str | None]


class Dispatcher:
    def __init__(
        self,
        config: ClusterConfig,
        clock: Callable[[], float] = time.time,
        metrics: RouterMetrics | None = None,
        cache_events: Callable[[str], AsyncIterator[CacheDelta]] | None = None,
    ) -> None:
        self.scheduler = Scheduler(
            config.router,
            config.efforts,
            transit_s=TRANSIT_S,
            late_binding=config.router.policy == "effort_aware",
            engine_refuses=config.router.engine_refuses,
            # The gateways that always run: each assumes the others placed as much as it did
            # since a report (an autoscaled gateway count above it only adds gateways).
            gateways=config.gateway.replicas.min_replicas,
        )
        self._metrics = metrics
        self._horizon_s = config.autoscaling.horizon_s
        self._efforts = config.efforts
        self._clock = clock
        self._attainment = Attainment()  # recent outcomes: met both SLOs?
        self._waiting: dict[str, _Waiter] = {}
        self._latest: Mapping[str, LoadReport] | None = None
        # Replicas that failed under a request -> the last report seen from them then: they get
        # nothing more until a newer report shows them alive.
        self._failed: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The engines' own word on their prefix caches, where they give it (`open(replica)`).
        self._feeds = None if cache_events is None else CacheFeeds(cache_events, self._cached)

    def publish(self, reports: Mapping[str, LoadReport]) -> None:
        """Every live replica's latest report. Safe from any thread: the loop applies them (and
        before its first request, the first admission does)."""
        self._latest = reports
        if (loop := self._loop) is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._refresh, reports)

    @property
    def has_reports(self) -> bool:
        """Whether any engine replica's load report has reached this gateway: until then it
        cannot bind late, and requests go straight to Serve's router."""
        return bool(self._latest)

    def _refresh(self, reports: Mapping[str, LoadReport] | None = None) -> None:
        reports = reports if reports is not None else self._latest
        if reports is not None:
            alive = {}
            for replica, report in reports.items():
                if report.reported_at <= self._failed.get(replica, -math.inf):
                    continue
                self._failed.pop(replica, None)
                alive[replica] = report
            self._failed = {r: at for r, at in self._failed.items() if r in reports}
            self.scheduler.forget(alive)
            for replica, report in alive.items():
                self.scheduler.report(replica, report)
            if self._feeds is not None:
                self._feeds.sync(r for r, report in alive.items() if report.cache_events)
        self._release()
        if self._metrics is not None:
            self._metrics.queue(self.scheduler, self._clock(), self._horizon_s)

    def _cached(self, replica: str, delta: CacheDelta) -> None:
        self.scheduler.cache_changed(replica, delta)
        self._release()  # a replica that now holds a queued request's prefix may take it

    def _release(self) -> None:
        now = self._clock()
        if self.scheduler.replicas == 0:  # every replica is gone: Serve's router holds them
            for waiter in self._waiting.values():
                self.scheduler.withdraw(waiter.ticket, now)
                if not waiter.future.done():
                    waiter.future.set_result(None)
            self._waiting.clear()
            return
        for ticket, replica in self.scheduler.dispatch(now):
            waiter = self._waiting.pop(ticket.request_id, None)
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(replica)
            else:  # its client left in the meantime: the seat goes back
                self.scheduler.completed(ticket, replica, None, now)

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        """Wait for a replica; raise `Overloaded` (429) when the wait would break the SLO."""
        self._loop = asyncio.get_running_loop()
        self._refresh()
        if self.scheduler.replicas == 0:
            return Admission()
        now = self._clock()
        ticket = self.scheduler.ticket(request, now)
        decision = self.scheduler.submit(ticket, now, degradable=degradable)
        if isinstance(decision, Rejected):
            self._attainment.add(now, request.effort, False)  # shed: an SLO miss too
            if self._metrics is not None:
                self._metrics.rejected(request.effort)
            raise Overloaded(decision.retry_after_s)
        if self._metrics is not None:
            self._metrics.admitted(decision.ticket.effort, decision.degraded_from)
        effort = decision.ticket.effort if decision.degraded_from else None
        return await self._wait(decision.ticket, effort)

    async def readmit(self, admission: Admission, report: LoadReport) -> Admission:
        """The replica refused the request with `report` (another gateway took the room since
        the report this one placed by): it queues again in its place and waits for a replica."""
        self._loop = asyncio.get_running_loop()
        ticket = admission.ticket
        if ticket is None or admission.replica is None:  # Serve's router placed it: it retries
            return admission
        self.scheduler.refused(ticket, admission.replica, report, self._clock())
        if self.scheduler.replicas == 0:
            return Admission()
        return await self._wait(ticket, admission.effort)

    async def resume(
        self, moved: Admission | None, request: SchedulingRequest, cause: str = "failure"
    ) -> Admission:
        """A running request leaves its replica (it failed, or drains: `cause`): its
        continuation `request` (the prompt and the reply so far) queues ahead of later arrivals
        and is never shed (its client is mid-reply)."""
        self._loop = asyncio.get_running_loop()
        if self._metrics is not None:
            self._metrics.migrated(cause)
        ticket = moved.ticket if moved is not None else None
        if ticket is None or self.scheduler.replicas == 0:  # Serve's router places it
            return Admission()
        written = request.prompt_tokens - ticket.request.prompt_tokens  # the reply so far
        expected = max(ticket.expected_output_tokens - written, 1)
        # Keyed by its arrival, without cost: ahead of everything that arrived after it.
        resumed = replace(
            ticket,
            request=request,
            expected_output_tokens=expected,
            protected=True,
            deadline=ticket.arrival,
        )
        self.scheduler.resumed(resumed, self._clock())
        return await self._wait(resumed, moved.effort)

    async def _wait(self, ticket: Ticket, effort: Effort | None) -> Admission:
        waiter = _Waiter(ticket, asyncio.get_running_loop().create_future())
        self._waiting[ticket.request_id] = waiter
        self._release()
        try:
            replica = await waiter.future
        except asyncio.CancelledError:  # the client left while queued
            if self._waiting.pop(ticket.request_id, None) is not None:
                self.scheduler.withdraw(ticket, self._clock())
            elif not waiter.future.cancelled():  # placed just before it left: free the seat
                placed = waiter.future.result()
                self.scheduler.completed(ticket, placed, None, self._clock())
            raise
        return Admission(replica, effort, ticket)

    def arrived(self, admission: Admission, received_at: float) -> None:
        """The replica took the request at `received_at`: reports from then on count it."""
        if admission.ticket is not None and admission.replica is not None:
            self.scheduler.arrived(admission.ticket, admission.replica, received_at)

    def release(self, admission: Admission, end: Release) -> None:
        """The request left its replica. One that ran to the end teaches the cost model and
        counts toward SLO attainment; a replica that failed under it gets nothing more until a
        load report shows it alive."""
        ticket = admission.ticket
        if ticket is None:
            return
        now = self._clock()
        output_tokens, first_output_at = end.output_tokens, end.first_output_at
        if end.report is not None and admission.replica in self.scheduler:  # fresher than Serve's
            self.scheduler.report(admission.replica, end.report)
        self.scheduler.completed(
            ticket, admission.replica, output_tokens, now, ended_at=end.ended_at
        )
        if end.replica_failed and admission.replica is not None:
            last = (self._latest or {}).get(admission.replica)
            self._failed[admission.replica] = last.reported_at if last else -math.inf
            self.scheduler.drop(admission.replica)
        if output_tokens is not None and first_output_at is not None:
            itl = (now - first_output_at) / (output_tokens - 1) if output_tokens > 1 else 0.0
            met = self._efforts[ticket.effort].met(first_output_at - ticket.arrival, itl)
            self._attainment.add(now, ticket.effort, met)
        self._release()

    def demand(self) -> DemandSignal:
        """Demand as this gateway sees it: the gateway reports it to the autoscaler."""
        now = self._clock()
        return self.scheduler.demand(now, self._attainment.by_effort(now))
