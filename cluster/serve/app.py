"""The Serve application builder: `import_path: cluster.serve.app:build_app`, args = the config."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from cluster.config import ClusterConfig, EngineKind, ReplicaConfig, validate_config
from cluster.engine.parallelism import engine_placement
from cluster.serve.deployments import EngineServer, Gateway

ROUTER_CLASS = "cluster.serve.request_router:TokenAwareRequestRouter"


def _replica_options(replicas: ReplicaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": replicas.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": replicas.num_cpus},
    }
    if replicas.min_replicas == replicas.max_replicas:
        options["num_replicas"] = replicas.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": replicas.min_replicas,
            "initial_replicas": replicas.min_replicas,
            "max_replicas": replicas.max_replicas,
            "target_ongoing_requests": replicas.target_ongoing_requests,
        }
    return options


def build(config: ClusterConfig) -> Application:
    args = config.to_args()
    engine_options = _replica_options(config.engine_replicas)
    if config.engine.kind is EngineKind.VLLM:
        engine_options |= engine_placement(config)
    # Weights come from model.path: a hub is never contacted (air-gapped clusters).
    env = {"HF_HUB_OFFLINE": "1"} | config.engine.env
    engine_options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    engine = serve.deployment(EngineServer, name="engine").options(
        **engine_options,
        # Scale-down and redeploys wait for in-flight streams, then abort the rest.
        graceful_shutdown_timeout_s=config.engine.drain_timeout_s,
        # A replica that cannot start (bad weights path, OOM) fails the deploy quickly and says why.
        max_constructor_retry_count=3,
        max_queued_requests=config.router.max_queued_requests,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER_CLASS,
            request_routing_stats_period_s=config.router.load_report_period_s,
        ),
        health_check_period_s=5,
    )
    gateway = serve.deployment(Gateway, name="gateway").options(
        **_replica_options(config.gateway.replicas)
    )
    return gateway.bind(args, engine.bind(args))


def build_app(args: dict[str, Any]) -> Application:
    """Entry point for `serve run` / `serve deploy` / KubeRay's serveConfigV2."""
    return build(validate_config(args))
