"""How many engine replicas: the projected token backlog over what one replica gets through.

Request counts lie for reasoning models (one request is 50 tokens or 20,000), so demand is measured
in tokens (prompt + expected output, the scheduler's cost). The projected backlog over the next
`horizon_s` is the tokens offered per second (every request, admitted or shed) times the horizon,
plus the tokens already waiting for a replica; one replica gets through its measured throughput
(for the current effort mix, measured while saturated) times the horizon, planned at
`target_utilization`. Offered tokens jump the moment load steps up, long before queues or request
counts do. Missed SLOs in any effort class add a replica even when the backlog looks fine.
Hysteresis keeps a noisy flat load from flapping: up after `upscale_delay_s` of sustained excess
(at once when demand reaches `urgent_factor` times the target: that is no noise), down only below a
margin and after `downscale_delay_s`, and then by at most `downscale_max_replicas`: each further
release waits out the delay again. A diurnal day falls far slower than that, so this costs little,
while after a sudden lull it keeps the capacity a returning load needs and a cold start cannot
supply in time. Optional scale to zero waits for a long
idle spell (never shorter than a cold start) and wakes at once on the first queued request.
Pure: the caller passes the time in the signal.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cluster.config import AutoscalingConfig
from cluster.contracts import DemandSignal, Effort

ATTAINMENT_WINDOW_S = 60.0  # SLO attainment is judged over the last minute of finished requests


@dataclass(frozen=True)
class ScalingSignal:
    now: float
    target: int  # replicas Serve is already keeping (running or starting)
    offered_tokens_s: float  # demand: tokens of requests offered per second (recent window)
    queued_tokens: float = 0.0  # waiting for a replica (in the gateways' queues)
    waiting_requests: int = 0  # requests with no replica to run on (wakes a scaled-to-zero app)
    # Measured for the current mix while saturated; None: the last measurement, else the prior.
    tokens_per_replica_s: float | None = None
    attainment: Mapping[Effort, float] = field(default_factory=dict)  # recent, per effort
    starting: int = 0  # of `target`, replicas not serving yet (cold starts under way)

    @classmethod
    def of(
        cls,
        demands: Iterable[DemandSignal],
        *,
        now: float,
        target: int,
        serving: int,
        waiting_requests: float = 0,
    ) -> ScalingSignal:
        """The fleet's signal from every gateway's demand: offered work, queues and capacity add
        up; the worst attainment counts. `waiting_requests` floors the gateways' own count
        (Serve's handle queue, when no engine replica is up)."""
        demands = list(demands)
        capacity = sum(d.capacity_tokens_s or 0.0 for d in demands)
        attainment: dict[Effort, float] = {}
        for d in demands:
            for effort, met in d.attainment:
                attainment[effort] = min(met, attainment.get(effort, met))
        return cls(
            now=now,
            target=target,
            offered_tokens_s=sum(d.offered_tokens_s for d in demands),
            queued_tokens=sum(d.queued_tokens for d in demands),
            waiting_requests=math.ceil(
                max(sum(d.waiting_requests for d in demands), waiting_requests)
            ),
            tokens_per_replica_s=capacity / serving if capacity and serving else None,
            attainment=attainment,
            starting=max(0, target - serving),
        )


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # what drove it: backlog, slo, hold, up-delay, down-delay, min, max, idle, wake
    demand: float  # replicas' worth of projected backlog, before bounds, spares and delays


@dataclass
class Hysteresis:
    """Ray Serve's delay rule (a change must be wanted for its whole delay before it happens),
    plus a margin: scale down only when the want is clearly below the target."""

    upscale_delay_s: float
    downscale_delay_s: float
    margin: float = 0.0
    urgent_factor: float = math.inf  # want >= target x this: up at once (Serve: never)
    max_release: int | None = None  # replicas released per downscale (None: all at once)
    _up_since: float | None = None
    _down_since: float | None = None

    def reset(self) -> None:
        self._up_since = self._down_since = None

    def apply(self, now: float, target: int, want: int, reason: str, demand: float) -> Decision:
        if want > target:
            self._down_since = None
            self._up_since = now if self._up_since is None else self._up_since
            urgent = want >= target * self.urgent_factor
            if urgent or now - self._up_since >= self.upscale_delay_s:
                self._up_since = None
                return Decision(want, reason, demand)
            return Decision(target, "up-delay", demand)
        self._up_since = None
        clearly_below = want < target * (1 - self.margin) or (want == 0 and reason == "idle")
        if want < target and clearly_below:
            self._down_since = now if self._down_since is None else self._down_since
            if now - self._down_since >= self.downscale_delay_s:
                self._down_since = None
                if self.max_release is not None and reason != "idle":
                    want = max(want, target - self.max_release)
                return Decision(want, reason, demand)
            return Decision(target, "down-delay", demand)
        self._down_since = None
        pinned = want == target and reason in ("max", "min")  # demand is beyond a bound
        return Decision(target, reason if pinned else "hold", demand)


@dataclass
class BacklogAutoscaler:
    config: AutoscalingConfig
    min_replicas: int
    max_replicas: int
    delays: Hysteresis = None  # type: ignore[assignment]
    _busy_at: float | None = None  # the last time there was any work at all
    _measured: float | None = None  # the last throughput measured while saturated

    def __post_init__(self) -> None:
        c = self.config
        self.delays = self.delays or Hysteresis(
            c.upscale_delay_s,
            c.downscale_delay_s,
            c.downscale_margin,
            c.urgent_factor,
            c.downscale_max_replicas,
        )

    def decide(self, s: ScalingSignal) -> Decision:
        c = self.config
        self._measured = s.tokens_per_replica_s or self._measured
        throughput = self._measured or c.replica_tokens_per_s
        backlog = s.offered_tokens_s * c.horizon_s + s.queued_tokens
        demand = backlog / (throughput * c.horizon_s * c.target_utilization)
        want, reason = math.ceil(demand) + c.warm_spares, "backlog"
        slo_missed = any(a < c.slo_attainment_floor for a in s.attainment.values())
        # One step at a time: while a replica is still starting, its effect is not visible yet.
        if slo_missed and want <= s.target and s.starting == 0:
            want, reason = s.target + 1, "slo"
        busy = s.offered_tokens_s > 0 or s.queued_tokens > 0 or s.waiting_requests > 0
        if busy or self._busy_at is None:
            self._busy_at = s.now
        floor = self.min_replicas
        if c.scale_to_zero:
            idle_s = s.now - self._busy_at
            busy_floor = max(1, self.min_replicas)
            floor = 0 if idle_s >= max(c.idle_before_zero_s, c.replica_start_s) else busy_floor
        if want < floor:
            want, reason = floor, ("idle" if floor == 0 else "min")
        if want > self.max_replicas:
            want, reason = self.max_replicas, "max"
        if s.target == 0 and busy:  # a request waits on nothing: wake now, no delay
            self.delays.reset()
            return Decision(max(want, 1), "wake", demand)
        return self.delays.apply(s.now, s.target, want, reason, demand)


@dataclass
class Attainment:
    """Per-effort SLO attainment over the last `ATTAINMENT_WINDOW_S` of outcomes."""

    _outcomes: deque[tuple[float, Effort, bool]] = field(default_factory=deque)

    def add(self, now: float, effort: Effort, met: bool) -> None:
        self._outcomes.append((now, effort, met))

    def by_effort(self, now: float) -> dict[Effort, float]:
        while self._outcomes and self._outcomes[0][0] < now - ATTAINMENT_WINDOW_S:
            self._outcomes.popleft()
        seen: dict[Effort, list[bool]] = {}
        for _, effort, met in self._outcomes:
            seen.setdefault(effort, []).append(met)
        return {e: sum(v) / len(v) for e, v in seen.items()}
