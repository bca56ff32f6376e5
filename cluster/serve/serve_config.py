"""The Ray Serve config document (`serve deploy`, a RayService's `serveConfigV2`) for a cluster
config: its application `args` are the schema again, so replicas validate what the operator wrote."""

from __future__ import annotations

from typing import Any

from cluster.config import ClusterConfig

APP_IMPORT_PATH = "cluster.serve.app:build_app"


def serve_config(cfg: ClusterConfig, app_name: str = "gpt-oss") -> dict[str, Any]:
    """The Ray Serve config file (`serve deploy` format) for this cluster config."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.gateway.host, "port": cfg.gateway.port},
        "applications": [
            {
                "name": app_name,
                "route_prefix": "/",
                "import_path": APP_IMPORT_PATH,
                "args": cfg.to_args(),
            }
        ],
    }
