"""A day in one-second steps: request counts as fluids, for GPU-hours under a diurnal trace.

The discrete-event simulator follows every request and engine step; a day of the reference mix at
cluster scale is millions of requests, too many for it. This model keeps, per effort class, how
many requests wait and how many run, with the same roofline step time (`step_seconds`) setting
each running request's speed, the same seats per replica, cold starts, drains, and shedding when
the queue ahead would break a class's TTFT SLO. Each second the autoscaler sees what it would see
live (offered tokens, queue, ongoing requests, measured throughput, attainment) and the replicas
it keeps (serving, starting or draining) are charged as GPU time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.engine.batching import step_seconds
from cluster.scheduling.autoscaling import ATTAINMENT_WINDOW_S
from cluster.scheduling.scheduler import OFFERED_WINDOW_S
from cluster.sim.fleets import Autoscaler, Observation
from cluster.sim.workload import ClusterSpec, WorkloadSpec, rate_factor

ORDER = (Effort.LOW, Effort.MEDIUM, Effort.HIGH)  # the scheduler serves cheap work first


@dataclass(frozen=True)
class _Class:
    share: float
    prompt: float  # mean tokens
    output: float
    ttft_slo_s: float
    itl_slo_s: float

    @property
    def cost(self) -> float:
        return self.prompt + self.output


@dataclass
class DayResult:
    gpu_hours: float
    missed: float  # requests shed or served outside an SLO
    offered: float
    trace: list[tuple[float, int, float]] = field(default_factory=list)  # (t, kept, backlog)


def _mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma**2 / 2)  # of a lognormal


def run_day(
    autoscaler: Autoscaler,
    workload: WorkloadSpec,
    cluster: ClusterSpec,
    config: ClusterConfig,
    start_s: float,
    initial_replicas: int,
) -> DayResult:
    classes = {
        e: _Class(
            workload.effort_mix[e],
            _mean(workload.prompt_tokens.median, workload.prompt_tokens.sigma),
            min(_mean(d.median, d.sigma), workload.max_tokens),
            config.efforts[e].ttft_slo_s,
            config.efforts[e].itl_slo_s,
        )
        for e, d in workload.output_tokens.items()
    }
    seats, tp = cluster.max_num_seqs, cluster.tensor_parallel_size
    running = dict.fromkeys(classes, 0.0)
    queued = dict.fromkeys(classes, 0.0)
    starting: deque[float] = deque()  # ready times
    draining: deque[float] = deque()  # release times
    serving = initial_replicas
    offered_window: deque[float] = deque()
    recent: deque[dict[Effort, tuple[float, float]]] = deque()  # per second: (met, offered)
    result = DayResult(0.0, 0.0, 0.0)
    for second in range(int(workload.duration_s)):
        now = float(second)
        while starting and starting[0] <= now:
            starting.popleft()
            serving += 1
        while draining and draining[0] <= now:
            draining.popleft()
        rate = workload.rate * rate_factor(workload.rate_profile, now)
        batch = sum(running.values()) / max(serving, 1)
        context = sum(running[e] * (c.prompt + c.output / 2) for e, c in classes.items())
        tpot = step_seconds(
            cluster.perf, tp, max(1, round(batch)), 0, round(context / max(serving, 1))
        )
        done = {e: running[e] / (c.output * tpot + 0.05) for e, c in classes.items()}
        for e in classes:
            running[e] -= done[e]
        free = serving * seats - sum(running.values())
        drain_rate = max(sum(done.values()), 1e-9)
        missed, second_outcomes = 0.0, {}
        for e in ORDER:
            c = classes[e]
            arrivals = rate * c.share
            ahead = sum(queued[x] for x in ORDER[: ORDER.index(e) + 1])
            room = max(0.0, c.ttft_slo_s * drain_rate - ahead)  # shed what would wait too long
            admitted = min(arrivals, room + free)
            queued[e] += admitted
            take = min(queued[e], free)
            queued[e] -= take
            running[e] += take
            free -= take
            late = queued[e] / drain_rate > c.ttft_slo_s or tpot > c.itl_slo_s
            missed += (arrivals - admitted) + (admitted if late else 0.0)
            second_outcomes[e] = (0.0 if late else admitted, arrivals)
        result.missed += missed
        result.offered += rate
        offered_window.append(rate * sum(c.share * c.cost for c in classes.values()))
        if len(offered_window) > OFFERED_WINDOW_S:
            offered_window.popleft()
        recent.append(second_outcomes)
        if len(recent) > ATTAINMENT_WINDOW_S:
            recent.popleft()
        attainment = {}
        for e in classes:
            met, offered = (sum(x) for x in zip(*(r[e] for r in recent), strict=True))
            if offered:
                attainment[e] = met / offered
        kept = serving + len(starting)
        result.gpu_hours += (kept + len(draining)) * tp / 3600
        queued_tokens = sum(queued[e] * c.cost for e, c in classes.items())
        backlog = queued_tokens + sum(running[e] * c.cost / 2 for e, c in classes.items())
        saturated = free <= 0 and serving
        throughput = (
            sum(done[e] * c.cost for e, c in classes.items()) / serving if saturated else None
        )
        o = Observation.of(
            now=now,
            target=kept,
            serving=serving,
            offered_tokens_s=sum(offered_window) / len(offered_window),
            queued_tokens=queued_tokens,
            backlog_tokens=backlog,
            ongoing=sum(running.values()) + sum(queued.values()),
            waiting_requests=math.ceil(sum(queued.values())),
            tokens_per_replica_s=throughput,
            attainment=attainment,
        )
        want = autoscaler.decide(o).desired
        for _ in range(want - kept):
            starting.append(now + start_s)
        for _ in range(kept - want):
            if starting:
                starting.pop()  # cancel the newest cold start
            elif serving > 0:
                serving -= 1  # drains: its running requests finish on it, the GPUs stay busy
                draining.append(now + max(c.output for c in classes.values()) * tpot)
        result.trace.append((now, kept, backlog))
    return result
