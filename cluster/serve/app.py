"""The Serve application builder: `import_path: cluster.serve.app:build_app`, args = the config."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from cluster.config import ClusterConfig, EngineKind, ReplicaConfig, validate_config
from cluster.engine.parallelism import engine_placement
from cluster.serve.deployments import EngineServer, Gateway
from cluster.serve.serve_config import follows_backlog

ROUTER_CLASS = "cluster.serve.request_router:TokenAwareRequestRouter"
# Gateway replicas push their demand (custom autoscaling metrics) this often (Serve reads it from
# the replica's environment); the policy sees their mean over the look-back (gateways already
# smooth demand).
METRICS_PUSH_ENV = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2"}
LOOK_BACK_S = 12.0  # above Serve's metrics_interval_s default (10 s), as it requires


def _replica_options(replicas: ReplicaConfig, autoscale: bool = False) -> dict[str, Any]:
    """Serve options for a deployment: autoscaling between different bounds (or always, under the
    application's policy, which sees only deployments that autoscale)."""
    options: dict[str, Any] = {
        "max_ongoing_requests": replicas.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": replicas.num_cpus},
    }
    if replicas.min_replicas == replicas.max_replicas and not autoscale:
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
    options = _replica_options(config.engine_replicas)
    if follows_backlog(config):
        scaling = config.autoscaling
        options["autoscaling_config"] |= {
            "min_replicas": 0 if scaling.scale_to_zero else config.engine_replicas.min_replicas,
            # Ours applies the configured delays with its hysteresis; Serve's would add to them.
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
        }
    return options


def _gateway_options(config: ClusterConfig) -> dict[str, Any]:
    """While engines follow the backlog the gateways report demand: they always autoscale
    (between equal bounds, if so configured) so Serve collects their metrics."""
    backlog = follows_backlog(config)
    options = _replica_options(config.gateway.replicas, autoscale=backlog)
    if backlog:
        options["autoscaling_config"]["look_back_period_s"] = LOOK_BACK_S
        options["ray_actor_options"]["runtime_env"] = {"env_vars": METRICS_PUSH_ENV}
    return options


def build(config: ClusterConfig) -> Application:
    # The replicas get the config less the engine replica bounds, which only the deployment
    # options and the autoscaling policy read: a change of bounds scales the engines instead of
    # restarting every replica (Serve restarts a deployment whose arguments changed).
    args = config.to_args()
    del args["engine_replicas"]
    engine_options = _engine_options(config)
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
        **_gateway_options(config),
        # A gateway replica leaving (scale-down, upgrade) finishes its streams first.
        graceful_shutdown_timeout_s=config.engine.drain_timeout_s,
    )
    return gateway.bind(args, engine.bind(args))


def build_app(args: dict[str, Any]) -> Application:
    """Entry point for `serve run` / `serve deploy` / KubeRay's serveConfigV2."""
    return build(validate_config(args))
