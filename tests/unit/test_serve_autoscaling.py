"""The application's Serve autoscaling policy on hand-built AutoscalingContexts (no cluster)."""

from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig
from ray.serve.config import AutoscalingContext

from cluster.config import AutoscalingConfig
from cluster.serve.autoscaling import ClusterPolicy


def context(name: str, metrics=None, current: int = 1, queued: float = 0.0, **serve):
    return AutoscalingContext(
        deployment_id=name,
        deployment_name=name,
        app_name="gpt-oss",
        current_num_replicas=current,
        target_num_replicas=current,
        running_replicas=[],
        total_num_requests=queued,
        total_queued_requests=queued,
        aggregated_metrics=metrics or {},
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=1_000.0,
        config=ServeAutoscalingConfig(min_replicas=0, max_replicas=8, **serve),
    )


def decide(gateway_metrics, current=2, queued=0.0, gateway=None, **autoscaling):
    config = AutoscalingConfig(upscale_delay_s=0, **autoscaling).model_dump(mode="json")
    policy = ClusterPolicy(config, {"min_replicas": 1, "max_replicas": 8})
    contexts = {"engine": context("engine", current=current, queued=queued)}
    contexts["gateway"] = gateway or context("gateway", gateway_metrics)
    decisions, states = policy(contexts)
    return decisions, states


def test_engine_demand_is_the_sum_of_the_gateways_over_its_serving_replicas():
    metrics = {  # two gateway replicas' means over the look-back
        "offered_tokens_s": {"g1": 18_000.0, "g2": 12_000.0},
        "capacity_tokens_s": {"g1": 12_000.0, "g2": 8_000.0},  # 10,000 per serving replica
    }
    decisions, states = decide(metrics)
    assert decisions["engine"] == 4 and states["engine"]["reason"] == "backlog"  # 30k/(10k*.8)


def test_the_lowest_attainment_any_gateway_reports_adds_a_replica():
    metrics = {"offered_tokens_s": {"g1": 1_000.0}, "attainment_high": {"g1": 0.97, "g2": 0.5}}
    decisions, states = decide(metrics)
    assert decisions["engine"] == 3 and states["engine"]["reason"] == "slo"


def test_requests_queued_at_the_handle_wake_an_engine_deployment_at_zero():
    decisions, states = decide({}, current=0, queued=3, scale_to_zero=True)
    assert decisions["engine"] == 1 and states["engine"]["reason"] == "wake"


def test_gateways_keep_serves_default_policy_on_ongoing_requests():
    busy = context("gateway", current=2, queued=900.0, target_ongoing_requests=200)
    decisions, _ = decide({}, gateway=busy)
    assert decisions["gateway"] == 4.5  # 900 ongoing / 200 per replica; Serve rounds and bounds


def test_without_gateway_metrics_the_engine_still_decides():
    policy = ClusterPolicy({}, {"min_replicas": 1, "max_replicas": 8})
    decisions, _ = policy({"engine": context("engine", current=1)})
    assert set(decisions) == {"engine"} and decisions["engine"] == 1


def test_under_the_ongoing_requests_policy_the_engine_gets_serves_default_too():
    policy = ClusterPolicy({"policy": "ongoing_requests"}, {"max_replicas": 8})
    busy = context("engine", current=2, queued=300.0, target_ongoing_requests=50)
    decisions, _ = policy({"engine": busy})
    assert decisions["engine"] == 6
