"""Every Prometheus metric the product exports, defined once (`SPECS`).

They are Ray metrics (`ray.util.metrics`), so each process's values reach Prometheus through Ray's
metrics export on every node, labelled with Ray's node and worker tags; Ray prefixes each name with
`ray_`, and `Spec.exported_name` is the name dashboards and alerts use. Outside a Ray worker (unit
tests) recording is a no-op. The recorders below only translate what the pure code reports
(request records, scheduler state, load reports, autoscaling decisions) into samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ray.util.metrics import Counter, Gauge, Histogram

from cluster.config import EffortProfile
from cluster.contracts import Effort, Outcome
from cluster.scheduling.autoscaling import Decision

if TYPE_CHECKING:
    from cluster.api.generation import RequestRecord
    from cluster.contracts import LoadReport
    from cluster.scheduling.scheduler import Scheduler

RAY_PREFIX = "ray_"

# Reasoning models answer in seconds to many minutes: buckets from 50 ms up to 30 min.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1200, 1800)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
RATIO_BUCKETS = (0.125, 0.25, 0.5, 0.75, 0.9, 1.1, 1.5, 2, 4, 8)

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


@dataclass(frozen=True)
class Spec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS

    @property
    def exported_name(self) -> str:
        return RAY_PREFIX + self.name

    def series_names(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this metric."""
        if self.kind == "histogram":
            return tuple(f"{self.exported_name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.exported_name,)

    def create(self) -> Counter | Gauge | Histogram:
        if self.kind == "counter":
            return Counter(self.name, self.help, tag_keys=self.labels)
        if self.kind == "gauge":
            return Gauge(self.name, self.help, tag_keys=self.labels)
        return Histogram(self.name, self.help, boundaries=list(self.buckets), tag_keys=self.labels)


E = ("effort",)

# Gateway: one record per request.
TTFT = Spec("gpt_oss_time_to_first_token_seconds", "histogram",
            "Arrival to the first output token (any channel).", E)  # fmt: skip
TTFA = Spec("gpt_oss_time_to_first_answer_token_seconds", "histogram",
            "Arrival to the first final-channel token: what a reasoning model's user waits for.",
            E)  # fmt: skip
ITL = Spec("gpt_oss_inter_token_latency_seconds", "histogram", "Time between output tokens.", E,
           TOKEN_GAP_BUCKETS)  # fmt: skip
DURATION = Spec("gpt_oss_request_duration_seconds", "histogram",
                "Arrival to the end of the response.", ("effort", "outcome"))  # fmt: skip
QUEUE_WAIT = Spec("gpt_oss_queue_wait_seconds", "histogram",
                  "Arrival to admission onto a replica.", E)  # fmt: skip
REQUESTS = Spec("gpt_oss_requests_total", "counter",
                "Requests by outcome: completed, cancelled (client left), failed, deadline (504), "
                "rejected (shed with 429), quota (over its API key's limits: 429).",
                ("effort", "endpoint", "outcome"))  # fmt: skip
SLO = Spec("gpt_oss_slo_requests_total", "counter",
           "Completed and rejected requests by whether they met both the TTFT and inter-token "
           "SLOs of their effort (a rejected request did not).", ("effort", "met"))  # fmt: skip
TOKENS = Spec("gpt_oss_tokens_total", "counter",
              "Tokens by kind: prompt, cached (of the prompt, held by the engine's prefix cache), "
              "reasoning (analysis channel), completion (all output).",
              ("effort", "kind"))  # fmt: skip
COST_RATIO = Spec("gpt_oss_cost_prediction_ratio", "histogram",
                  "Output tokens of a finished request over the cost model's prediction.", E,
                  RATIO_BUCKETS)  # fmt: skip

# Per API key, by its name (never its material).
KEY_REQUESTS = Spec("gpt_oss_key_requests_total", "counter", "Requests per API key by outcome.",
                    ("key", "outcome"))  # fmt: skip
KEY_TOKENS = Spec("gpt_oss_key_tokens_total", "counter",
                  "Tokens per API key: prompt, completion (all output).", ("key", "kind"))  # fmt: skip

# Router: each gateway's scheduler.
ADMITTED = Spec("gpt_oss_router_admitted_total", "counter", "Requests admitted to the queue.", E)
REJECTED = Spec("gpt_oss_router_rejected_total", "counter", "Requests shed with 429.", E)
DEGRADED = Spec("gpt_oss_router_degraded_total", "counter",
                "Requests run at a lower reasoning effort instead of being shed.",
                ("from_effort", "to_effort"))  # fmt: skip
MIGRATIONS = Spec("gpt_oss_migrations_total", "counter",
                  "Running requests moved to another engine replica mid-reply, by cause "
                  "(failure: their replica failed; drain: it is leaving).", ("cause",))  # fmt: skip
QUEUE_DEPTH = Spec("gpt_oss_router_queue_depth", "gauge", "Requests waiting for a replica.", E)
QUEUED_TOKENS = Spec("gpt_oss_router_queued_tokens", "gauge",
                     "Expected tokens (prompt + output) of the requests waiting.")  # fmt: skip
OFFERED = Spec("gpt_oss_router_offered_tokens_per_second", "gauge",
               "Expected tokens of every request offered lately (admitted or shed), per second.")  # fmt: skip
BACKLOG = Spec("gpt_oss_router_projected_backlog_tokens", "gauge",
               "Offered tokens/s over the autoscaling horizon plus the queue: the autoscaler's "
               "demand, in tokens.")  # fmt: skip

# Engine replicas: their load reports.
R = ("replica",)
RUNNING = Spec("gpt_oss_engine_running_requests", "gauge", "Requests in the running batch.", R)
WAITING = Spec("gpt_oss_engine_waiting_requests", "gauge", "Requests in the engine's own queue.", R)
KV_USAGE = Spec("gpt_oss_engine_kv_cache_usage_ratio", "gauge", "Share of KV-cache tokens used.", R)
SEATS = Spec("gpt_oss_engine_max_num_seqs", "gauge", "Requests the engine runs at once.", R)

# Autoscaler: Serve's controller.
D = ("deployment",)
DESIRED = Spec("gpt_oss_autoscaler_desired_replicas", "gauge",
               "Engine replicas the autoscaler asks for.", D)  # fmt: skip
CURRENT = Spec("gpt_oss_autoscaler_current_replicas", "gauge", "Engine replicas running now.", D)
MAX_REPLICAS = Spec("gpt_oss_autoscaler_max_replicas", "gauge", "The upper bound on replicas.", D)
DEMAND = Spec("gpt_oss_autoscaler_demand_replicas", "gauge",
              "Replicas' worth of projected token backlog, before bounds and delays.", D)  # fmt: skip
REASON = Spec("gpt_oss_autoscaler_decision", "gauge",
              "1 for the reason behind the latest decision, 0 for the others.",
              ("deployment", "reason"))  # fmt: skip

SPECS = (TTFT, TTFA, ITL, DURATION, QUEUE_WAIT, REQUESTS, SLO, TOKENS, COST_RATIO,
         KEY_REQUESTS, KEY_TOKENS,
         ADMITTED, REJECTED, DEGRADED, MIGRATIONS, QUEUE_DEPTH, QUEUED_TOKENS, OFFERED, BACKLOG,
         RUNNING, WAITING, KV_USAGE, SEATS,
         DESIRED, CURRENT, MAX_REPLICAS, DEMAND, REASON)  # fmt: skip


Factory = Callable[[Spec], Any]  # Spec.create, or a recorder in tests


class GatewayMetrics:
    """Per-request latencies, outcomes, SLO attainment and tokens (each gateway replica)."""

    def __init__(
        self, efforts: Mapping[Effort, EffortProfile], factory: Factory = Spec.create
    ) -> None:
        self._efforts = efforts
        self._m = {s.name: factory(s) for s in (TTFT, TTFA, ITL, DURATION, QUEUE_WAIT, REQUESTS,
                                                SLO, TOKENS, COST_RATIO, KEY_REQUESTS,
                                                KEY_TOKENS)}  # fmt: skip

    def record(self, r: RequestRecord) -> None:
        m, effort = self._m, {"effort": r.effort.value}
        m[REQUESTS.name].inc(1, effort | {"endpoint": r.endpoint, "outcome": r.outcome})
        if r.key is not None:
            m[KEY_REQUESTS.name].inc(1, {"key": r.key, "outcome": r.outcome})
            for kind, n in (("prompt", r.prompt_tokens), ("completion", r.completion_tokens)):
                if n:
                    m[KEY_TOKENS.name].inc(n, {"key": r.key, "kind": kind})
        if r.outcome == Outcome.QUOTA:
            return
        m[DURATION.name].observe(r.finished_at - r.arrived_at, effort | {"outcome": r.outcome})
        if r.admitted_at is not None:
            m[QUEUE_WAIT.name].observe(r.admitted_at - r.arrived_at, effort)
        if r.first_token_at is not None:
            m[TTFT.name].observe(r.first_token_at - r.arrived_at, effort)
        if r.first_answer_at is not None:
            m[TTFA.name].observe(r.first_answer_at - r.arrived_at, effort)
        for gap in r.token_gaps:
            m[ITL.name].observe(gap, effort)
        for kind, n in (("prompt", r.prompt_tokens), ("cached", r.cached_tokens),
                        ("reasoning", r.reasoning_tokens),
                        ("completion", r.completion_tokens)):  # fmt: skip
            if n:
                m[TOKENS.name].inc(n, effort | {"kind": kind})
        if r.outcome in (Outcome.COMPLETED, Outcome.REJECTED):
            met = r.met(self._efforts[r.effort])
            m[SLO.name].inc(1, effort | {"met": str(met).lower()})
        if r.outcome == Outcome.COMPLETED and r.expected_output_tokens:
            ratio = r.completion_tokens / r.expected_output_tokens
            m[COST_RATIO.name].observe(ratio, effort)


class RouterMetrics:
    """Admission decisions and the queue of one gateway's scheduler."""

    def __init__(self, factory: Factory = Spec.create) -> None:
        self._m = {s.name: factory(s) for s in (ADMITTED, REJECTED, DEGRADED, MIGRATIONS,
                                                QUEUE_DEPTH, QUEUED_TOKENS, OFFERED,
                                                BACKLOG)}  # fmt: skip

    def admitted(self, effort: Effort, degraded_from: Effort | None) -> None:
        self._m[ADMITTED.name].inc(1, {"effort": effort.value})
        if degraded_from is not None:
            tags = {"from_effort": degraded_from.value, "to_effort": effort.value}
            self._m[DEGRADED.name].inc(1, tags)

    def rejected(self, effort: Effort) -> None:
        self._m[REJECTED.name].inc(1, {"effort": effort.value})

    def migrated(self, cause: str) -> None:
        self._m[MIGRATIONS.name].inc(1, {"cause": cause})

    def queue(self, scheduler: Scheduler, now: float, horizon_s: float) -> None:
        for effort, n in scheduler.queue.depth_by_effort().items():
            self._m[QUEUE_DEPTH.name].set(n, {"effort": effort.value})
        queued, offered = scheduler.queued_tokens(), scheduler.offered.rate(now)
        self._m[QUEUED_TOKENS.name].set(queued)
        self._m[OFFERED.name].set(offered)
        self._m[BACKLOG.name].set(offered * horizon_s + queued)


class EngineMetrics:
    """One engine replica's load, as it reports it to the routers."""

    def __init__(self, replica: str, factory: Factory = Spec.create) -> None:
        self._tags = {"replica": replica}
        self._m = {s.name: factory(s) for s in (RUNNING, WAITING, KV_USAGE, SEATS)}

    def record(self, report: LoadReport) -> None:
        m = self._m
        m[RUNNING.name].set(report.running, self._tags)
        m[WAITING.name].set(report.waiting, self._tags)
        m[SEATS.name].set(report.max_num_seqs, self._tags)
        if report.kv_capacity_tokens:
            m[KV_USAGE.name].set(report.kv_used_tokens / report.kv_capacity_tokens, self._tags)


class AutoscalerMetrics:
    """What the engine autoscaler decided and why (Serve's controller process)."""

    def __init__(self, factory: Factory = Spec.create) -> None:
        self._m = {s.name: factory(s) for s in (DESIRED, CURRENT, MAX_REPLICAS, DEMAND, REASON)}

    def record(self, deployment: str, decision: Decision, current: int, maximum: int) -> None:
        m, tags = self._m, {"deployment": deployment}
        m[DESIRED.name].set(decision.desired, tags)
        m[CURRENT.name].set(current, tags)
        m[MAX_REPLICAS.name].set(maximum, tags)
        m[DEMAND.name].set(decision.demand, tags)
        for reason in DECISION_REASONS:
            m[REASON.name].set(float(reason == decision.reason), tags | {"reason": reason})
