"""The application's Ray Serve autoscaling policy: one policy over both deployments.

Demand starts in the gateways' schedulers: each gateway replica reports its `DemandSignal` as
Serve custom autoscaling metrics (`Gateway.record_autoscaling_stats`), off the data path, and
Serve's controller hands this policy every replica's mean over the look-back. The engine
deployment follows the pure `BacklogAutoscaler` on the sum of the gateways' signals (unless
`autoscaling.policy` says otherwise); the gateways keep Serve's default policy (ongoing requests
per replica). Serve's delays are set to
zero for the engine: the autoscaler applies the configured ones with its hysteresis. With no
engine replica at all, requests wait in Serve's handle queue, which Serve counts
(`total_queued_requests`) and which wakes the deployment.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

from cluster.config import AutoscalingConfig, ReplicaConfig
from cluster.contracts import DemandSignal
from cluster.metrics import AutoscalerMetrics
from cluster.scheduling.autoscaling import BacklogAutoscaler, ScalingSignal

Decisions = tuple[dict[Any, float], dict[Any, dict[str, Any]]]


def gateway_demands(ctx: AutoscalingContext | None) -> list[DemandSignal]:
    """Each gateway replica's reported demand (its metrics' means over Serve's look-back)."""
    by_replica: dict[Any, dict[str, float]] = {}
    for name, values in ((ctx.aggregated_metrics or {}) if ctx else {}).items():
        for replica, value in values.items():
            by_replica.setdefault(replica, {})[name] = value
    return [DemandSignal.from_metrics(m) for m in by_replica.values()]


class ClusterPolicy:
    """Serve instantiates it once from the application's `autoscaling_policy` and calls it
    every control-loop period with the context of each deployment that autoscales."""

    def __init__(
        self,
        autoscaling: dict[str, Any] | None = None,
        engine_replicas: dict[str, Any] | None = None,
        engine: str = "engine",
        gateway: str = "gateway",
    ) -> None:
        config = AutoscalingConfig.model_validate(autoscaling or {})
        replicas = ReplicaConfig.model_validate(engine_replicas or {})
        self._backlog = config.policy == "backlog"
        self._core = BacklogAutoscaler(config, replicas.min_replicas, replicas.max_replicas)
        self._engine, self._gateway = engine, gateway
        self._metrics = AutoscalerMetrics()

    def __call__(self, contexts: dict[Any, AutoscalingContext]) -> Decisions:
        by_name = {ctx.deployment_name: (key, ctx) for key, ctx in contexts.items()}
        gateway = by_name.get(self._gateway, (None, None))[1]
        decisions: dict[Any, float] = {}
        states: dict[Any, dict[str, Any]] = {}
        for key, ctx in contexts.items():
            if ctx.deployment_name == self._engine and self._backlog:
                decisions[key], states[key] = self._engine_decision(ctx, gateway)
            else:  # Serve's default: ongoing requests per replica
                decisions[key], states[key] = replica_queue_length_autoscaling_policy(ctx)
        return decisions, states

    def _engine_decision(
        self, ctx: AutoscalingContext, gateway: AutoscalingContext | None
    ) -> tuple[int, dict[str, Any]]:
        signal = ScalingSignal.of(
            gateway_demands(gateway),
            now=ctx.current_time or time.time(),
            target=ctx.target_num_replicas,
            serving=ctx.current_num_replicas,
            waiting_requests=ctx.total_queued_requests or 0,
        )
        decision = self._core.decide(signal)
        self._metrics.record(
            ctx.deployment_name,
            decision,
            ctx.current_num_replicas,
            ctx.capacity_adjusted_max_replicas,
        )
        return decision.desired, {"reason": decision.reason, "demand": decision.demand}
