"""The Serve adapter of the backlog autoscaler, on a hand-built AutoscalingContext (no cluster)."""

from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig
from ray.serve.config import AutoscalingContext

from cluster.config import AutoscalingConfig
from cluster.serve.autoscaling import BacklogPolicy


def context(metrics: dict[str, dict[str, float]], current: int, queued: float = 0.0):
    return AutoscalingContext(
        deployment_id=None,
        deployment_name="engine",
        app_name="gpt-oss",
        current_num_replicas=current,
        target_num_replicas=current,
        running_replicas=[],
        total_num_requests=queued,
        total_queued_requests=queued,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=1_000.0,
        config=ServeAutoscalingConfig(min_replicas=0, max_replicas=8),
    )


def policy(**autoscaling) -> BacklogPolicy:
    config = AutoscalingConfig(upscale_delay_s=0, **autoscaling).model_dump(mode="json")
    return BacklogPolicy(config, min_replicas=1, max_replicas=8)


def test_demand_is_the_freshest_engine_report_and_capacity_per_serving_replica():
    # Two engines heard the gateways at different times: the larger report is the fresher one.
    metrics = {
        "offered_tokens_s": {"r1": 30_000.0, "r2": 24_000.0},
        "capacity_tokens_s": {"r1": 20_000.0, "r2": 20_000.0},  # 10,000 per serving replica
    }
    desired, state = policy()(context(metrics, current=2))
    assert desired == 4 and state["reason"] == "backlog"  # 30,000 / (10,000 x 0.8) = 3.75


def test_the_lowest_attainment_reported_adds_a_replica():
    metrics = {"offered_tokens_s": {"r1": 1_000.0}, "attainment_high": {"r1": 0.97, "r2": 0.5}}
    desired, state = policy()(context(metrics, current=2))
    assert desired == 3 and state["reason"] == "slo"


def test_requests_queued_at_the_handle_wake_a_deployment_at_zero():
    desired, state = policy(scale_to_zero=True)(context({}, current=0, queued=3))
    assert desired == 1 and state["reason"] == "wake"
