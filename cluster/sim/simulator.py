"""The event loop: arrivals and engine steps in virtual time, per-request timings, summary figures.

Each replica is the mock engine's `BatchingModel` (vLLM V1's scheduler shape, roofline step costs).
A replica steps while it has work. Ideally (`Topology`'s default) one gateway's policy sees each
replica's new load at the end of every step (a load report) and may release queued requests;
otherwise each of several gateways runs its own policy on periodic reports that arrive late, and
knows in between only what it placed and saw finish. Deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from cluster.config import ClusterConfig, EffortProfile
from cluster.contracts import Effort, LoadReport
from cluster.engine.batching import BatchingModel, StepResult, step_seconds
from cluster.scheduling.scheduler import Rejected, has_headroom
from cluster.sim.policies import Dispatch, Policy, ReplicaView, make_policy
from cluster.sim.workload import ClusterSpec, SimRequest, WorkloadSpec, generate

MAX_RUN_S = 0.25  # longest decode run simulated in one event (keeps reports frequent)


@dataclass
class Record:
    request: SimRequest
    rejected: bool = False
    retry_after_s: int = 0
    first_token: float | None = None
    first_final: float | None = None
    finished: float | None = None
    generated: int = 0
    final_at: int = 0  # the token that starts its answer (set when it is placed)
    queue_wait: float = 0.0  # arrival to the start of its prefill (TTFT minus its own prefill)
    gateway: int = 0  # the one whose scheduler placed it

    @property
    def ttft(self) -> float:
        return self.first_token - self.request.arrival

    @property
    def mean_itl(self) -> float:
        n = self.request.output_tokens
        return (self.finished - self.first_token) / (n - 1) if n > 1 else 0.0


@dataclass
class SimReplica:
    model: BatchingModel
    requested_at: float = 0.0  # when its GPUs were taken (start of a cold start)
    ready_at: float = 0.0
    draining: bool = False  # takes no new work; stops once idle
    stopped_at: float | None = None
    busy_until: float | None = None
    pending: StepResult | None = None
    step_start: float = 0.0
    live: dict[str, Record] = field(default_factory=dict)
    in_flight: int = 0  # seen as it is: nothing placed is missing from its report

    def serving(self, now: float) -> bool:
        return self.ready_at <= now and not self.draining and self.stopped_at is None

    def report(self, now: float) -> LoadReport:
        m = self.model
        return LoadReport(
            m.running,
            m.waiting,
            m.kv_used_tokens,
            m.kv_capacity_tokens,
            m.outstanding_tokens,
            m.max_num_seqs,
            now,
            m.prefill_tokens,
        )


@dataclass
class GatewayView:
    """A replica as one gateway sees it: the last report delivered to it, and what it placed
    there since that report was taken (a push policy adds those, as Serve's router counts its
    own assignments)."""

    replica: SimReplica
    last: LoadReport
    placed_at: list[float] = field(default_factory=list)

    def report(self, now: float) -> LoadReport:
        return self.last

    def serving(self, now: float) -> bool:
        return self.replica.serving(now)

    @property
    def in_flight(self) -> int:
        return len(self.placed_at)

    def deliver(self, report: LoadReport) -> bool:
        """Take a newer report (jitter can reorder them); whether it was newer."""
        if report.reported_at < self.last.reported_at:
            return False
        self.last = report
        self.placed_at = [at for at in self.placed_at if at > report.reported_at]
        return True


def meets_slo(r: Record, efforts: Mapping[Effort, EffortProfile]) -> bool:
    """Served within both SLOs of its effort (a rejected request is not)."""
    return r.finished is not None and efforts[r.request.effort].met(r.ttft, r.mean_itl)


@dataclass
class SimResult:
    """Figures cover requests that arrive after the warm-up (the first quarter of the run), so
    they describe the steady state, not the empty cluster filling up."""

    policy: str
    duration_s: float
    all_records: list[Record]
    slo: Mapping[Effort, EffortProfile]
    warmup_s: float = 0.0
    # Over the whole run, every replica: prompt tokens admitted, and those found in the cache.
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    # Placements that found every seat of their engine taken: they wait in vLLM's first-come
    # queue, out of the scheduler's order. And placements the engine refused (`Topology`).
    engine_queued: int = 0
    refused: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def records(self) -> list[Record]:
        return [r for r in self.all_records if r.request.arrival >= self.warmup_s]

    @property
    def window_s(self) -> float:
        return self.duration_s - self.warmup_s

    def served(self) -> list[Record]:
        return [r for r in self.records if r.finished is not None]

    def without_prompts(self) -> SimResult:
        """The same figures without what only the run needs (the prompts' block hashes and
        segments, the reply lengths at other efforts): a benchmark that keeps every run of
        several agentic regimes would hold gigabytes."""
        slim = {"blocks": (), "segments": (), "output_by_effort": {}}
        records = [replace(r, request=replace(r.request, **slim)) for r in self.all_records]
        return replace(self, all_records=records)

    def meets_slo(self, r: Record) -> bool:
        return meets_slo(r, self.slo)

    def summary(self) -> dict:
        served = self.served()
        # Rates count work finished inside the measured window, whenever it arrived: a request
        # of several minutes that arrived in the warm-up is steady-state work all the same. Not
        # after arrivals stop: that drain has no competition and would flatter policies that
        # queue everything.
        in_run = [
            r
            for r in self.all_records
            if r.finished is not None and self.warmup_s <= r.finished <= self.duration_s
        ]
        out = {
            "policy": self.policy,
            "offered": len(self.records),
            "completed": len(served),
            "rejected": sum(r.rejected for r in self.records),
            "degraded": sum(r.request.degraded_from is not None for r in self.records),
            "prefix_hit_rate": self.prefix_hit_rate,
            "engine_queued": self.engine_queued,
            "refused": self.refused,
            "throughput_rps": len(in_run) / self.window_s,
            "goodput_rps": sum(self.meets_slo(r) for r in in_run) / self.window_s,
            "efforts": {},
        }
        for effort in Effort:
            rs = [r for r in served if r.request.effort == effort]
            offered = [r for r in self.records if r.request.effort == effort]
            if not rs:
                continue
            out["efforts"][effort.value] = {
                "n": len(rs),
                "slo_attainment": sum(self.meets_slo(r) for r in rs) / max(len(offered), 1),
                "ttft_p50_s": _q([r.ttft for r in rs], 50),
                "ttft_p99_s": _q([r.ttft for r in rs], 99),
                "ttfft_p50_s": _q([r.first_final - r.request.arrival for r in rs], 50),
                "ttfft_p99_s": _q([r.first_final - r.request.arrival for r in rs], 99),
                "itl_p50_ms": _q([r.mean_itl for r in rs], 50) * 1000,
                "itl_p99_ms": _q([r.mean_itl for r in rs], 99) * 1000,
                "e2e_p50_s": _q([r.finished - r.request.arrival for r in rs], 50),
                "e2e_p99_s": _q([r.finished - r.request.arrival for r in rs], 99),
                "queue_wait_p99_s": _q([r.queue_wait for r in rs], 99),
            }
        return out


def _q(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Fleet(Protocol):
    """An autoscaler in the loop: every `period_s` it names the replica count it wants; new
    replicas serve `start_s` after they are asked for, removed ones drain first."""

    period_s: float
    start_s: float

    def decide(self, now: float, sim: Simulation) -> int: ...


class Simulation:
    def __init__(
        self,
        workload: WorkloadSpec,
        cluster: ClusterSpec,
        policy_name: str,
        config: ClusterConfig,
        fleet: Fleet | None = None,
    ) -> None:
        self.workload, self.cluster, self.config, self.fleet = workload, cluster, config, fleet
        self.policy_name = policy_name
        self.topology = top = cluster.topology
        self.requests = generate(workload)
        self.replicas = [self._new_replica(0.0, 0.0) for _ in range(cluster.replicas)]
        # Each gateway's view of the replicas: the replicas themselves in the ideal topology.
        self.views: list[list[ReplicaView]] = (
            [self.replicas]
            if top.ideal
            else [
                [GatewayView(r, r.report(0.0)) for r in self.replicas] for _ in range(top.gateways)
            ]
        )
        self.gateways: list[Policy] = [
            make_policy(
                policy_name,
                views,
                config,
                g,
                top.engine_refuses,
                top.gateways if top.engine_refuses else 1,
            )
            for g, views in enumerate(self.views)
        ]
        self.records = {r.request_id: Record(r) for r in self.requests}
        self.outcomes: list[Record] = []  # finished or rejected, in the order they were
        self._steps: list[tuple[float, int]] = []  # (step end, replica)
        self._timers: list[tuple[float, int, str, int]] = []  # (at, seq, kind, replica)
        # Load reports due and reports on their way: (at, seq, replica, None | (gateway, report)).
        # Apart from the timers because they do not cut engine runs short: a report is taken
        # between two steps, as vLLM's own stats are.
        self._reports: list[tuple[float, int, int, tuple[int, LoadReport] | None]] = []
        self._seq = 0
        self._rng = random.Random(top.seed)  # the proxies' spread, report phases and jitter
        self._report_due: set[int] = set()  # replicas to report at the end of their step
        self.engine_queued = self.refused = 0
        if fleet is not None:
            self._timer(fleet.period_s, "control")
        if top.report_period_s and not top.ideal:
            for k in range(len(self.replicas)):
                self._later(self._rng.uniform(0, top.report_period_s), k)

    @property
    def policy(self) -> Policy:
        """The first gateway's policy: the only one in the ideal topology."""
        return self.gateways[0]

    def _new_replica(self, requested_at: float, ready_at: float) -> SimReplica:
        c = self.cluster
        model = BatchingModel(
            c.perf,
            c.tensor_parallel_size,
            c.max_num_seqs,
            c.max_num_batched_tokens,
            c.kv_capacity_tokens,
        )
        return SimReplica(model, requested_at, ready_at)

    def _timer(self, at: float, kind: str, k: int = -1) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, k))

    def _later(self, at: float, k: int, delivery: tuple[int, LoadReport] | None = None) -> None:
        self._seq += 1
        heapq.heappush(self._reports, (at, self._seq, k, delivery))

    def _report_period(self, k: int, now: float) -> None:
        """Replica k's report is due: now if it is between steps, else when its step ends."""
        rep = self.replicas[k]
        if rep.stopped_at is not None:
            return
        if rep.busy_until is None:
            self._report(k, now)
        else:
            self._report_due.add(k)
        self._later(now + self.topology.report_period_s, k)

    def _report(self, k: int, now: float) -> None:
        """Replica k's load as of now, on its way to every gateway (Serve's controller
        broadcasts it), each copy late by the delay plus its own jitter."""
        report, top = self.replicas[k].report(now), self.topology
        for g in range(len(self.gateways)):
            late = top.report_delay_s + self._rng.uniform(0, top.report_jitter_s)
            if late:
                self._later(now + late, k, (g, report))
            else:
                self._deliver(g, k, report, now)

    def _deliver(self, g: int, k: int, report: LoadReport, now: float) -> None:
        if self.views[g][k].deliver(report) and self.replicas[k].stopped_at is None:
            self._apply(g, self.gateways[g].tick(k, now), now)

    @property
    def target(self) -> int:
        """Replicas kept (serving or starting), as an autoscaler counts them."""
        return sum(not r.draining and r.stopped_at is None for r in self.replicas)

    def _start(self, k: int, now: float, horizon: float) -> None:
        rep = self.replicas[k]
        if rep.busy_until is not None or rep.model.idle:
            return
        rep.model.now = max(rep.model.now, now)
        rep.step_start = rep.model.now
        rep.pending = rep.model.step(until=min(horizon, rep.model.now + MAX_RUN_S))
        rep.busy_until = rep.model.now
        heapq.heappush(self._steps, (rep.busy_until, k))

    def _finish_step(self, k: int, now: float) -> None:
        rep = self.replicas[k]
        result, rep.pending, rep.busy_until = rep.pending, None, None
        live = rep.live
        for rid, n in result.emitted.items():
            rec = live[rid]
            before = rec.generated
            rec.generated = generated = before + n
            if not before:
                rec.first_token = now
                own_prefill = prefill_seconds(self.cluster, rec.request.prompt_tokens)
                rec.queue_wait = max(0.0, rec.ttft - own_prefill)
            if generated >= rec.final_at and rec.first_final is None:
                into = (rec.final_at - before) / n  # where in this run the answer started
                rec.first_final = rep.step_start + into * result.duration_s
        told = set()  # gateways that saw one of their requests finish
        for rid in result.finished:
            rec = rep.live.pop(rid)
            rec.finished = now
            self.outcomes.append(rec)
            self.gateways[rec.gateway].done(rec.request, now)
            told.add(rec.gateway)
        if rep.draining and not rep.live:
            rep.stopped_at = now
        if self.topology.ideal:
            self._apply(0, self.policy.tick(k, now), now)
            return
        for g in sorted(told):  # a seat it knows is free
            if self.topology.reports_in_replies:
                self._deliver(g, k, rep.report(now), now)
            else:
                self._apply(g, self.gateways[g].release(now), now)
        if k in self._report_due or not self.topology.report_period_s:
            self._report_due.discard(k)
            self._report(k, now)

    def _apply(self, g: int, dispatch: Dispatch, now: float) -> None:
        gateway, queue = self.gateways[g], list(dispatch)
        refuses = self.topology.engine_refuses and hasattr(gateway, "refused")
        while queue:
            request, k = queue.pop(0)
            rep = self.replicas[k]
            model = rep.model
            if refuses and not self._room(rep, request, now):
                self.refused += 1
                queue.extend(gateway.refused(request, k, rep.report(now), now))
                continue
            self.engine_queued += model.running + model.waiting >= model.max_num_seqs
            rec = self.records[request.request_id]
            rec.final_at = math.ceil(request.output_tokens * (1 - self.workload.final_share))
            model.add(
                request.request_id,
                request.prompt_tokens,
                request.output_tokens,
                gateway.expected_output(request),
                request.blocks,
            )
            rep.live[request.request_id] = rec
            rec.gateway = g
            if request.blocks and len(self.gateways) > 1:
                for other in self.gateways:
                    if other is not gateway:
                        other.observed(request, k)
            if isinstance(view := self.views[g][k], GatewayView):
                view.placed_at.append(now)

    def _room(self, rep: SimReplica, request: SimRequest, now: float) -> bool:
        """The engine's own test before it takes a request: the scheduler's headroom rule on its
        exact state, its own prefix cache's hits included."""
        prefill = request.prompt_tokens - rep.model.cached_tokens(
            request.prompt_tokens, request.blocks
        )
        return has_headroom(
            rep.report(now),
            0,
            0,
            request.prompt_tokens,
            self.config.router,
            prefill=prefill,
            engine_side=True,
        )

    def _control(self, now: float) -> None:
        want, target = self.fleet.decide(now, self), self.target
        for _ in range(want - target):
            rep = self._new_replica(now, now + self.fleet.start_s)
            self.replicas.append(rep)
            if not self.topology.ideal:
                for views in self.views:
                    views.append(GatewayView(rep, rep.report(now)))
            self._timer(now + self.fleet.start_s, "ready", len(self.replicas) - 1)
        if want < target:  # cancel cold starts first, then drain the least busy
            kept = [
                k for k, r in enumerate(self.replicas) if not r.draining and r.stopped_at is None
            ]
            kept.sort(key=lambda k: (self.replicas[k].ready_at <= now, len(self.replicas[k].live)))
            for k in kept[: target - want]:
                rep = self.replicas[k]
                rep.draining = True
                if rep.ready_at > now or not rep.live:
                    rep.stopped_at = now
                for gateway in self.gateways:
                    gateway.leave(k)

    def _ready(self, k: int, now: float) -> None:
        """A cold start completed: the gateways hear of the replica (Serve broadcasts its
        replica set), and its reports begin."""
        if self.topology.ideal:
            self._apply(0, self.policy.tick(k, now), now)
            return
        self._report(k, now)
        if self.topology.report_period_s:
            self._later(now + self.topology.report_period_s, k)

    def _waiting(self) -> int:
        return sum(gateway.waiting() for gateway in self.gateways)

    def run(self) -> SimResult:
        requests, i, now = self.requests, 0, 0.0
        # Requests may also wait for a replica that is still starting: keep time moving then.
        gateways = len(self.gateways)
        # Requests may also wait for a replica that is still starting, or for a report that
        # shows a gateway the free seats: keep time moving then.
        while (
            i < len(requests)
            or self._steps
            or ((self._timers or self._reports) and self._waiting())
        ):
            next_arrival = requests[i].arrival if i < len(requests) else math.inf
            next_step = self._steps[0][0] if self._steps else math.inf
            next_timer = self._timers[0][0] if self._timers else math.inf
            next_report = self._reports[0][0] if self._reports else math.inf
            if next_report < min(next_step, next_arrival, next_timer):
                now, _, k, delivery = heapq.heappop(self._reports)
                if delivery is None:
                    self._report_period(k, now)
                else:
                    g, report = delivery
                    self._deliver(g, k, report, now)
            elif next_timer < min(next_step, next_arrival):
                now, _, kind, k = heapq.heappop(self._timers)
                if kind == "control":
                    self._control(now)
                    self._timer(now + self.fleet.period_s, "control")
                elif self.replicas[k].stopped_at is None:
                    self._ready(k, now)
            elif next_step <= next_arrival:
                now, k = heapq.heappop(self._steps)
                self._finish_step(k, now)
            else:
                now = next_arrival
                request = requests[i]
                i += 1
                g = self._rng.randrange(gateways) if gateways > 1 else 0
                decision = self.gateways[g].arrive(request, now)
                if isinstance(decision, Rejected):
                    rec = self.records[request.request_id]
                    rec.rejected, rec.retry_after_s = True, decision.retry_after_s
                    self.outcomes.append(rec)
                else:
                    self._apply(g, decision, now)
            horizon = min(
                requests[i].arrival if i < len(requests) else math.inf,
                self._timers[0][0] if self._timers else math.inf,
            )
            for k in range(len(self.replicas)):
                self._start(k, now, horizon)
        end = max(self.workload.duration_s, now)
        for rep in self.replicas:
            rep.stopped_at = rep.stopped_at if rep.stopped_at is not None else end
        return SimResult(
            self.policy_name,
            self.workload.duration_s,
            list(self.records.values()),
            self.config.efforts,
            warmup_s=self.workload.duration_s * self.workload.warmup_share,
            prompt_tokens=sum(r.model.prompt_tokens for r in self.replicas),
            cached_prompt_tokens=sum(r.model.cached_prompt_tokens for r in self.replicas),
            engine_queued=self.engine_queued,
            refused=self.refused,
        )


def simulate(
    workload: WorkloadSpec,
    cluster: ClusterSpec,
    policy_name: str,
    config: ClusterConfig,
    fleet: Fleet | None = None,
) -> SimResult:
    return Simulation(workload, cluster, policy_name, config, fleet).run()


def prefill_seconds(cluster: ClusterSpec, tokens: int) -> float:
    return step_seconds(cluster.perf, cluster.tensor_parallel_size, 0, tokens, 0)
