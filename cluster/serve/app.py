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
POLICY_CLASS = "cluster.serve.autoscaling:BacklogPolicy"
# Engine replicas push their autoscaling metrics this often (Serve reads it from the replica's
# environment); the policy sees their mean over the look-back (gateways already smooth demand).
METRICS_PUSH_ENV = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2"}
LOOK_BACK_S = 12.0  # above Serve's metrics_interval_s default (10 s), as it requires


def _replica_options(replicas: ReplicaConfig) -> dict[str, Any]:
    """Serve options for a deployment; between different bounds, Serve's default autoscaling."""
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


def _engine_options(config: ClusterConfig) -> dict[str, Any]:
    """The engine deployment follows the backlog autoscaler unless configured otherwise."""
    options = _replica_options(config.engine_replicas)
    scaling = config.autoscaling
    if "autoscaling_config" in options and scaling.policy == "backlog":
        options["autoscaling_config"] |= {
            "min_replicas": 0 if scaling.scale_to_zero else config.engine_replicas.min_replicas,
            "policy": {
                "policy_function": POLICY_CLASS,
                "policy_kwargs": {  # only what it needs: no secrets in the Serve config
                    "autoscaling": scaling.model_dump(mode="json"),
                    "min_replicas": config.engine_replicas.min_replicas,
                    "max_replicas": config.engine_replicas.max_replicas,
                },
            },
            # Ours applies the configured delays with its hysteresis; Serve's would add to them.
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            "look_back_period_s": LOOK_BACK_S,
        }
    return options


def build(config: ClusterConfig) -> Application:
    args = config.to_args()
    engine_options = _engine_options(config)
    if config.engine.kind is EngineKind.VLLM:
        engine_options |= engine_placement(config)
    # Weights come from model.path: a hub is never contacted (air-gapped clusters).
    env = {"HF_HUB_OFFLINE": "1"} | METRICS_PUSH_ENV | config.engine.env
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
        **_replica_options(config.gateway.replicas),
        # A gateway replica leaving (scale-down, upgrade) finishes its streams first.
        graceful_shutdown_timeout_s=config.engine.drain_timeout_s,
    )
    return gateway.bind(args, engine.bind(args))


def build_app(args: dict[str, Any]) -> Application:
    """Entry point for `serve run` / `serve deploy` / KubeRay's serveConfigV2."""
    return build(validate_config(args))
