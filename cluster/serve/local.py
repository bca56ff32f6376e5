"""A local Ray cluster running the Serve app: `make serve`, the integration tests and the benchmarks."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from cluster.config import ClusterConfig
from cluster.serve.ray_env import serve_env
from cluster.serve.serve_config import application

APP_NAME = "gpt-oss"

# Loopback only, no token auth file, no usage reporting (ANCHORS/NOTES-ENV recipes).
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


@dataclass(frozen=True)
class LocalCluster:
    url: str
    config: ClusterConfig
    metrics_url: str | None = None  # Ray's Prometheus export for this node

    def rss_bytes(self) -> int:
        """Resident memory of this process and every Ray process it started."""
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total


class DeploymentFailed(RuntimeError):
    """The app did not start; the message carries each failing deployment's own reason."""


# The applications this process declared, as a Serve config document lists them: each deploy
# applies them all, since a declarative deploy deletes what it does not name.
_declared: dict[str, dict[str, Any]] = {}


def deploy(config: ClusterConfig, name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Deploy as `serve deploy` and KubeRay do, from the Serve config document (the application's
    autoscaling policy exists only there), and wait until it runs or say why it failed."""
    from ray import serve

    _declared[name] = application(config, name, route_prefix)
    _apply()
    while (status := serve.status().applications.get(name)) is None or status.status in (
        "NOT_STARTED",
        "DEPLOYING",
    ):
        time.sleep(0.2)
    if status.status != "RUNNING":
        reasons = [
            f"{d_name}: {d.message}" for d_name, d in status.deployments.items() if d.message
        ]
        raise DeploymentFailed("\n".join([f"{name}: {status.message}", *reasons]))


def undeploy(name: str) -> None:
    """Delete one application this process deployed."""
    _declared.pop(name, None)
    _apply()


def _apply() -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    document = ServeDeploySchema.model_validate({"applications": list(_declared.values())})
    _get_global_client().deploy_apps(document)


def free_port() -> int:
    """A free TCP port on the loopback interface (tests and benchmarks bind only there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica_states() -> str:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return "starting Serve"
    parts = []
    for name, deployment in app.deployments.items():
        states = ", ".join(f"{n} {s.lower()}" for s, n in deployment.replica_states.items())
        parts.append(f"{name}: {states or deployment.status.lower()}")
    return "; ".join(parts)


@contextmanager
def local_cluster(
    config: ClusterConfig,
    progress: Callable[[str], None] | None = None,
    metrics_port: int | None = None,
) -> Iterator[LocalCluster]:
    """Start Ray + Serve + the app on 127.0.0.1:<gateway.port>; tear everything down on exit.
    With `metrics_port`, Ray exports every process's metrics there (on 127.0.0.1) for Prometheus."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Ray's processes read Serve's flags at start; the config decides them (for this cluster).
    os.environ.update(serve_env(config))
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="gpt-oss-ray-")
    started: list[psutil.Process] = []
    try:
        started = _start_ray(temp_dir, metrics_port)
        serve.start(http_options={"host": config.gateway.host, "port": config.gateway.port})
        # The deploy waits until every replica is up: report replica states meanwhile.
        with ThreadPoolExecutor(1) as pool:
            deployed = pool.submit(deploy, config)
            last = ""
            while not deployed.done():
                time.sleep(0.5)
                if progress is not None and (state := _replica_states()) != last:
                    progress(state)
                    last = state
            deployed.result()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
        yield LocalCluster(
            f"http://{config.gateway.host}:{config.gateway.port}", config, metrics_url
        )
    finally:
        _declared.clear()
        _shutdown_ray(started)


def _start_ray(temp_dir: str, metrics_port: int | None, attempts: int = 2) -> list[psutil.Process]:
    """Start a local Ray node; return the processes it started (GCS, raylet, agents), whose
    descendants are the workers and replicas. Ray 2.60 gives the raylet a fixed 30 s to register
    with the GCS, which a loaded 2-core machine can pass with nothing wrong: then one more try."""
    import ray

    def new_children() -> list[psutil.Process]:
        return [p for p in psutil.Process().children() if p.pid not in before]

    before = {p.pid for p in psutil.Process().children()}
    try:
        ray.init(
            address="local",
            include_dashboard=False,
            _temp_dir=temp_dir,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            _metrics_export_port=metrics_port,
        )
    except Exception as err:
        # A start that fails half-way must not leave Ray's global state set, or every later
        # start in this process fails too.
        _shutdown_ray(new_children())
        if attempts == 1 or "timed out during startup" not in str(err):
            raise
        return _start_ray(temp_dir, metrics_port, attempts - 1)
    return new_children()


def _shutdown_ray(started: list[psutil.Process], grace_s: float = 30.0) -> None:
    """Stop Ray and wait for every process it started to exit, killing what outlives `grace_s`:
    the next cluster in this process starts on an idle machine."""
    import ray

    processes = list(started)
    for proc in started:
        try:
            processes += proc.children(recursive=True)
        except psutil.Error:
            continue
    ray.shutdown()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue


def wait_forever() -> None:
    while True:
        time.sleep(3600)
