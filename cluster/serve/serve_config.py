"""The Ray Serve config document (`serve deploy`, a RayService's `serveConfigV2`) for a cluster
config: its application `args` are the schema again, so replicas validate what the operator wrote."""

from __future__ import annotations

from typing import Any

from cluster.config import ClusterConfig

APP_IMPORT_PATH = "cluster.serve.app:build_app"
POLICY_CLASS = "cluster.serve.autoscaling:ClusterPolicy"


def follows_backlog(cfg: ClusterConfig) -> bool:
    """Whether engine replicas follow the backlog autoscaler (between different bounds)."""
    replicas = cfg.engine_replicas
    return cfg.autoscaling.policy == "backlog" and replicas.min_replicas < replicas.max_replicas


def autoscaling_policy(cfg: ClusterConfig) -> dict[str, Any]:
    """The application-level autoscaling policy: it decides every deployment that autoscales
    (a Serve application has one policy or none). Its arguments are two sections of the config,
    as written (the chart passes its values' sections): no secrets, which Serve would log."""
    return {
        "policy_function": POLICY_CLASS,
        "policy_kwargs": {
            "autoscaling": cfg.autoscaling.model_dump(mode="json"),
            "engine_replicas": cfg.engine_replicas.model_dump(mode="json"),
        },
    }


def application(cfg: ClusterConfig, name: str, route_prefix: str = "/") -> dict[str, Any]:
    """One application of a Serve config document."""
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": APP_IMPORT_PATH,
        "args": cfg.to_args(),
        "autoscaling_policy": autoscaling_policy(cfg),
    }


def serve_config(cfg: ClusterConfig, app_name: str = "gpt-oss") -> dict[str, Any]:
    """The Ray Serve config file (`serve deploy` format) for this cluster config."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.gateway.host, "port": cfg.gateway.port},
        "applications": [application(cfg, app_name)],
    }
