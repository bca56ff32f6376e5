"""Autoscalers for the simulators: ours (the production `BacklogAutoscaler`) and Ray Serve's default
(its own `replica_queue_length_autoscaling_policy`: ongoing requests per replica).

Both decide from the same `Observation` once a period and face the same bounds, delays and cold
starts, so only the decision differs. Serve averages ongoing requests over `look_back_period_s`
(30 s) as its controller does. `SimFleet` puts either one in the discrete-event simulator's loop;
the fluid day model (`fluid.py`) feeds them directly.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig
from ray.serve.config import AutoscalingContext

from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.scheduling.autoscaling import (
    Attainment,
    BacklogAutoscaler,
    Decision,
    Hysteresis,
    ScalingSignal,
)
from cluster.sim.policies import EffortAware
from cluster.sim.simulator import Simulation, meets_slo


@dataclass(frozen=True)
class Observation:
    """What a simulated autoscaler sees each period: ours decides from `signal`, the very input
    the live Serve policy builds; Serve's default counts requests."""

    signal: ScalingSignal
    serving: int
    backlog_tokens: float  # queued + still held by engines
    ongoing: float  # requests queued or in engines (what Serve counts)

    @property
    def now(self) -> float:
        return self.signal.now

    @property
    def target(self) -> int:
        return self.signal.target

    @classmethod
    def of(cls, *, serving: int, backlog_tokens: float, ongoing: float, **signal) -> Observation:
        """`signal` holds `ScalingSignal`'s fields; the replicas still starting follow."""
        starting = max(0, signal["target"] - serving)
        return cls(ScalingSignal(**signal, starting=starting), serving, backlog_tokens, ongoing)


class Autoscaler(Protocol):
    name: str

    def decide(self, o: Observation) -> Decision: ...


@dataclass
class Backlog:
    """Ours: projected token backlog over measured replica throughput, SLO-aware."""

    config: ClusterConfig
    min_replicas: int
    max_replicas: int
    name: str = "backlog"
    _core: BacklogAutoscaler = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._core = BacklogAutoscaler(
            self.config.autoscaling, self.min_replicas, self.max_replicas
        )

    def decide(self, o: Observation) -> Decision:
        return self._core.decide(o.signal)


@dataclass
class OngoingRequests:
    """Ray Serve's default: replicas = ongoing requests (averaged) / target_ongoing_requests."""

    config: ClusterConfig
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: int = 64
    look_back_period_s: float = 30.0
    name: str = ""
    _samples: deque[tuple[float, float]] = field(default_factory=deque)
    _delays: Hysteresis = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        a = self.config.autoscaling
        self._delays = Hysteresis(a.upscale_delay_s, a.downscale_delay_s)  # Serve: no margin
        self.name = self.name or f"serve_ongoing@{self.target_ongoing_requests}"

    def decide(self, o: Observation) -> Decision:
        self._samples.append((o.now, o.ongoing))
        while self._samples[0][0] < o.now - self.look_back_period_s:
            self._samples.popleft()
        average = sum(n for _, n in self._samples) / len(self._samples)
        context = AutoscalingContext(
            deployment_id=None,
            deployment_name="engine",
            app_name="sim",
            current_num_replicas=o.serving,
            target_num_replicas=o.target,
            running_replicas=[],
            total_num_requests=average,
            total_queued_requests=o.signal.waiting_requests,
            aggregated_metrics={},
            raw_metrics={},
            capacity_adjusted_min_replicas=self.min_replicas,
            capacity_adjusted_max_replicas=self.max_replicas,
            policy_state={},
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=o.now,
            config=ServeAutoscalingConfig(
                min_replicas=self.min_replicas,
                max_replicas=self.max_replicas,
                target_ongoing_requests=self.target_ongoing_requests,
            ),
        )
        raw, _ = replica_queue_length_autoscaling_policy(context)
        want = min(max(math.ceil(raw), self.min_replicas), self.max_replicas)
        if o.target == 0 and o.ongoing:  # Serve's cold-start path skips the delay
            self._delays.reset()
            return Decision(max(want, 1), "wake", raw)
        return self._delays.apply(o.now, o.target, want, "ongoing", raw)


@dataclass(frozen=True)
class Sample:
    t: float
    target: int
    serving: int
    backlog_tokens: float
    ongoing: float
    reason: str


@dataclass
class SimFleet:
    """An autoscaler in the discrete-event simulator: observes the cluster every `period_s`."""

    autoscaler: Autoscaler
    start_s: float
    period_s: float = 1.0
    trace: list[Sample] = field(default_factory=list)
    _recent: Attainment = field(default_factory=Attainment)
    _seen: int = 0

    def decide(self, now: float, sim: Simulation) -> int:
        # Push policies keep no queue and no demand signal: Serve's own autoscaler counts
        # the requests in the engines.
        schedulers = [g.scheduler for g in sim.gateways if isinstance(g, EffortAware)]
        serving = sum(r.serving(now) for r in sim.replicas)
        running = [r for r in sim.replicas if r.stopped_at is None]
        # Every gateway's demand signal, combined as the live policy combines them.
        attainment = self._attainment(now, sim)
        demands = [scheduler.demand(now, attainment) for scheduler in schedulers]
        o = Observation(
            ScalingSignal.of(demands, now=now, target=sim.target, serving=serving),
            serving=serving,
            backlog_tokens=sum(scheduler.queued_tokens() for scheduler in schedulers)
            + sum(r.model.outstanding_tokens for r in running),
            ongoing=sum(len(scheduler.queue) for scheduler in schedulers)
            + sum(r.model.running + r.model.waiting for r in running),
        )
        decision = self.autoscaler.decide(o)
        self.trace.append(
            Sample(now, o.target, serving, o.backlog_tokens, o.ongoing, decision.reason)
        )
        return decision.desired

    def _attainment(self, now: float, sim: Simulation) -> dict[Effort, float]:
        """Per-effort SLO attainment of requests that finished (or were shed) lately."""
        for r in sim.outcomes[self._seen :]:
            self._recent.add(now, r.request.effort, meets_slo(r, sim.config.efforts))
        self._seen = len(sim.outcomes)
        return self._recent.by_effort(now)
