"""Ray Serve custom autoscaling policy for the engine deployment: the pure `BacklogAutoscaler` on
the engine replicas' custom metrics (`record_autoscaling_stats`).

The demand signals start in the gateways' schedulers and ride to the engines on the requests they
dispatch (`DemandSignal`); every engine replica reports what it last heard from each gateway, so
the policy takes the largest report (the freshest) for demand and the lowest for SLO attainment.
Serve's own delays are set to zero for this policy: the autoscaler applies the configured ones
with its hysteresis. With no replica at all, requests wait in Serve's handle queue, which Serve
counts (`total_queued_requests`) and which wakes the deployment.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.serve.config import AutoscalingContext

from cluster.config import AutoscalingConfig
from cluster.contracts import Effort
from cluster.metrics import AutoscalerMetrics
from cluster.scheduling.autoscaling import BacklogAutoscaler, ScalingSignal


class BacklogPolicy:
    def __init__(self, autoscaling: dict[str, Any], min_replicas: int, max_replicas: int) -> None:
        config = AutoscalingConfig.model_validate(autoscaling)
        self._core = BacklogAutoscaler(config, min_replicas, max_replicas)
        self._metrics = AutoscalerMetrics()

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        reported = ctx.aggregated_metrics or {}

        def values(name: str) -> list[float]:
            return list((reported.get(name) or {}).values())

        capacity = max(values("capacity_tokens_s"), default=0.0)
        serving = ctx.current_num_replicas
        waiting = max(max(values("waiting_requests"), default=0.0), ctx.total_queued_requests)
        signal = ScalingSignal(
            now=ctx.current_time or time.time(),
            target=ctx.target_num_replicas,
            offered_tokens_s=max(values("offered_tokens_s"), default=0.0),
            queued_tokens=max(values("queued_tokens"), default=0.0),
            waiting_requests=math.ceil(waiting),
            starting=max(0, ctx.target_num_replicas - serving),
            tokens_per_replica_s=capacity / serving if capacity and serving else None,
            attainment={e: min(seen) for e in Effort if (seen := values(f"attainment_{e.value}"))},
        )
        decision = self._core.decide(signal)
        self._metrics.record(
            ctx.deployment_name, decision, serving, ctx.capacity_adjusted_max_replicas
        )
        return decision.desired, {"reason": decision.reason, "demand": decision.demand}
