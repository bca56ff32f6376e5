"""Every Prometheus metric the product exports, defined once (Ray's metrics API, so each process's
values reach Prometheus through Ray's metrics export, labelled with Ray's node and process tags)."""

from __future__ import annotations

from ray.util.metrics import Gauge

from cluster.scheduling.autoscaling import Decision

DECISION_REASONS = (
    "backlog",
    "slo",
    "hold",
    "up-delay",
    "down-delay",
    "min",
    "max",
    "idle",
    "wake",
)


class AutoscalerMetrics:
    """What the engine autoscaler decided and why (Serve's controller process)."""

    def __init__(self) -> None:
        self.desired = Gauge(
            "gpt_oss_autoscaler_desired_replicas",
            "Engine replicas the autoscaler asks for.",
            tag_keys=("deployment",),
        )
        self.current = Gauge(
            "gpt_oss_autoscaler_current_replicas",
            "Engine replicas running now.",
            tag_keys=("deployment",),
        )
        self.demand = Gauge(
            "gpt_oss_autoscaler_demand_replicas",
            "Replicas' worth of projected token backlog, before bounds and delays.",
            tag_keys=("deployment",),
        )
        self.reason = Gauge(
            "gpt_oss_autoscaler_decision",
            "1 for the reason behind the latest decision, 0 for the others.",
            tag_keys=("deployment", "reason"),
        )

    def record(self, deployment: str, decision: Decision, current: int) -> None:
        tags = {"deployment": deployment}
        self.desired.set(decision.desired, tags)
        self.current.set(current, tags)
        self.demand.set(decision.demand, tags)
        for reason in DECISION_REASONS:
            self.reason.set(float(reason == decision.reason), tags | {"reason": reason})
