"""The Grafana dashboards (ops/grafana/*.json), built from panel lists so every query is written
once, here, and checked (tests/ops): it parses with promtool and names only metrics that exist.

Queries use Grafana's `$__rate_interval` and a `datasource` variable; the Helm chart ships the
files as ConfigMaps for Grafana's dashboard sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
MET = 'met="true"'
COMPLETED = 'outcome="completed"'
OUTPUT, PROMPT, CACHED = 'kind="completion"', 'kind="prompt"', 'kind="cached"'


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    width: int = 12
    stacked: bool = False


def _quantiles(metric: str, by: str = "effort") -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[{RATE}])))",
         f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.95, 0.5)
    )  # fmt: skip


def _sum_rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


SERVICE: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Latency by reasoning effort", (
        Panel("Time to first token", _quantiles("ray_gpt_oss_time_to_first_token_seconds"), "s",
              "Arrival to the first output token of any channel (reasoning comes first)."),
        Panel("Time to first answer token",
              _quantiles("ray_gpt_oss_time_to_first_answer_token_seconds"), "s",
              "Arrival to the first final-channel token: what a user of a reasoning model waits "
              "for."),
        Panel("Inter-token latency", _quantiles("ray_gpt_oss_inter_token_latency_seconds"), "s"),
        Panel("Request duration", _quantiles("ray_gpt_oss_request_duration_seconds"), "s"),
        Panel("Queue wait", _quantiles("ray_gpt_oss_queue_wait_seconds"), "s",
              "Time in the gateway's effort-aware queue before a replica takes the request."),
        Panel("SLO attainment", ((
            (f"{_sum_rate('ray_gpt_oss_slo_requests_total', 'effort', MET)} / "
            f"{_sum_rate('ray_gpt_oss_slo_requests_total', 'effort')}"), "{{effort}}"),),
            "percentunit", "Share of requests meeting both SLOs of their effort; shed ones miss."),
    )),
    ("Throughput and admission", (
        Panel("Requests by outcome",
              ((_sum_rate("ray_gpt_oss_requests_total", "outcome"), "{{outcome}}"),), "reqps",
              stacked=True),
        Panel("Tokens by kind", ((_sum_rate("ray_gpt_oss_tokens_total", "kind"), "{{kind}}"),),
              "short", "Tokens/s; completion includes reasoning."),
        Panel("Admitted and rejected (429) by effort", (
            (_sum_rate("ray_gpt_oss_router_admitted_total", "effort"), "admitted {{effort}}"),
            (_sum_rate("ray_gpt_oss_router_rejected_total", "effort"), "rejected {{effort}}")),
            "reqps", "The gateways' admission decisions (effort_aware router policy)."),
        Panel("Degraded effort", ((_sum_rate("ray_gpt_oss_router_degraded_total",
                                             "from_effort, to_effort"),
                                   "{{from_effort}} -> {{to_effort}}"),), "reqps",
              "Requests run at a lower effort instead of being shed."),
        Panel("Prefix cache hits by effort", ((
            (f"{_sum_rate('ray_gpt_oss_tokens_total', 'effort', CACHED)} / "
            f"{_sum_rate('ray_gpt_oss_tokens_total', 'effort', PROMPT)}"), "{{effort}}"),),
            "percentunit", "Share of prompt tokens the engines' prefix caches held: what "
            "prefix-aware placement saves in prefill.", width=24),
    )),
    ("Queue and backlog", (
        Panel("Queue depth by effort",
              (("sum by (effort) (ray_gpt_oss_router_queue_depth)", "{{effort}}"),), "short",
              stacked=True),
        Panel("Projected backlog and queue (tokens)", (
            ("sum(ray_gpt_oss_router_projected_backlog_tokens)", "projected backlog"),
            ("sum(ray_gpt_oss_router_queued_tokens)", "queued")), "short",
            "Offered tokens/s over the autoscaling horizon plus the queue: the autoscaler's demand."),
        Panel("Offered tokens/s", (("sum(ray_gpt_oss_router_offered_tokens_per_second)",
                                    "offered"),), "short"),
        Panel("Cost model: actual / predicted output tokens",
              _quantiles("ray_gpt_oss_cost_prediction_ratio"), "short",
              "1 is a perfect prediction; the scheduler orders and sheds on the prediction."),
    )),
    ("Replicas and autoscaler", (
        Panel("Engine replicas", (
            ("max by (deployment) (ray_gpt_oss_autoscaler_current_replicas)", "current"),
            ("max by (deployment) (ray_gpt_oss_autoscaler_desired_replicas)", "desired"),
            ("max by (deployment) (ray_gpt_oss_autoscaler_demand_replicas)", "demand"),
            ("max by (deployment) (ray_gpt_oss_autoscaler_max_replicas)", "max")), "short"),
        Panel("Autoscaler decision", (
            ("max by (reason) (ray_gpt_oss_autoscaler_decision) > 0", "{{reason}}"),), "short",
            "The reason behind the latest decision (backlog, slo, delays, bounds, idle, wake)."),
        Panel("KV cache use by replica",
              (("max by (replica) (ray_gpt_oss_engine_kv_cache_usage_ratio)", "{{replica}}"),),
              "percentunit"),
        Panel("Running and waiting by replica", (
            ("sum by (replica) (ray_gpt_oss_engine_running_requests)", "running {{replica}}"),
            ("sum by (replica) (ray_gpt_oss_engine_waiting_requests)", "waiting {{replica}}")),
            "short"),
        Panel("Replica health (Ray Serve)", (
            ("sum by (deployment) (ray_serve_deployment_replica_healthy)", "healthy {{deployment}}"),
            ("sum by (deployment) (increase(ray_serve_deployment_replica_starts_total[1h]))",
             "starts/h {{deployment}}")), "short", width=24),
    )),
)  # fmt: skip

CAPACITY: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Capacity", (
        Panel("Tokens/s per engine replica", ((
            "sum(rate(ray_gpt_oss_tokens_total{kind=~\"prompt|completion\"}[" + RATE + "])) / "
            "clamp_min(max(ray_gpt_oss_autoscaler_current_replicas), 1)", "per replica"),),
            "short", "What one replica gets through for the current effort mix."),
        Panel("Seat utilisation", ((
            ("sum(ray_gpt_oss_engine_running_requests) / "
            "clamp_min(sum(ray_gpt_oss_engine_max_num_seqs), 1)"), "running / seats"),),
            "percentunit"),
        Panel("Demand vs replicas (7 days)", (
            ("max(max_over_time(ray_gpt_oss_autoscaler_demand_replicas[1h]))", "peak demand/h"),
            ("max(avg_over_time(ray_gpt_oss_autoscaler_current_replicas[1h]))", "replicas")),
            "short", "Headroom planning: compare with `gpt-oss-cluster sim` (ops/capacity.md)."),
        Panel("Effort mix", ((
            (f"{_sum_rate('ray_gpt_oss_requests_total', 'effort')} / "
            f"scalar(sum(rate(ray_gpt_oss_requests_total[{RATE}])))"), "{{effort}}"),),
            "percentunit", stacked=True),
        Panel("Output tokens per completed request", ((
            (f"{_sum_rate('ray_gpt_oss_tokens_total', 'effort', OUTPUT)} / "
            f"{_sum_rate('ray_gpt_oss_requests_total', 'effort', COMPLETED)}"),
            "{{effort}}"),), "short", "Reasoning effort's cost: feeds the cost model's priors."),
        Panel("Prompt tokens per completed request", ((
            (f"{_sum_rate('ray_gpt_oss_tokens_total', 'effort', PROMPT)} / "
            f"{_sum_rate('ray_gpt_oss_requests_total', 'effort', COMPLETED)}"),
            "{{effort}}"),), "short"),
    )),
    ("Per API key", (
        Panel("Requests by API key and outcome", ((
            _sum_rate("ray_gpt_oss_key_requests_total", "key, outcome"), "{{key}} {{outcome}}"),),
            "reqps", "By key name, never key material; `quota` is a 429 from the key's limits."),
        Panel("Tokens by API key", ((
            _sum_rate("ray_gpt_oss_key_tokens_total", "key"), "{{key}}"),), "short",
            "Prompt + output tokens per second, for quotas and chargeback."),
    )),
)  # fmt: skip

DASHBOARDS = {
    "gpt-oss-service": ("gpt-oss-cluster: service", SERVICE),
    "gpt-oss-capacity": ("gpt-oss-cluster: capacity", CAPACITY),
}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": {"stacking": {"mode": "normal" if panel.stacked else "none"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def dashboard(uid: str) -> dict[str, Any]:
    title, rows = DASHBOARDS[uid]
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for row_title, row in rows:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": ["gpt-oss-cluster"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


def expressions(uid: str) -> list[str]:
    return [expr for _, row in DASHBOARDS[uid][1] for p in row for expr, _ in p.targets]


def dashboard_files() -> dict[str, str]:
    """ops/grafana/<uid>.json for every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid), indent=2) + "\n" for uid in DASHBOARDS}
