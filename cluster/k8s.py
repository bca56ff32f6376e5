"""The operator's view of a deployed RayService, with the official `kubernetes` client.

`status` reads the RayService (its conditions, the Serve applications and deployments KubeRay
reports) and its pods (KubeRay labels them `ray.io/cluster`). `rollout` applies a new rendered
RayService (a replace at the current resourceVersion) and follows KubeRay's upgrade until the new generation serves, or fails, or times out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}


@dataclass(frozen=True)
class PodState:
    name: str
    group: str  # head, or the worker group's name
    phase: str
    ready: bool
    restarts: int


@dataclass
class ServiceState:
    name: str
    generation: int
    observed_generation: int
    service_status: str
    conditions: list[tuple[str, str, str, str]]  # (type, status, reason, message)
    applications: dict[str, tuple[str, dict[str, str]]]  # app -> (status, deployment -> status)
    active_cluster: str
    pending_cluster: str
    pods: list[PodState] = field(default_factory=list)

    def condition(self, kind: str) -> bool:
        return any(t == kind and s == "True" for t, s, _, _ in self.conditions)

    @property
    def serving(self) -> bool:
        """This generation is the one serving, and serving ready."""
        return (
            self.observed_generation >= self.generation
            and self.condition("Ready")
            and not self.condition("UpgradeInProgress")
        )

    @property
    def failure(self) -> str | None:
        for app, (status, deployments) in self.applications.items():
            if status in FAILED_APP_STATES:
                broken = [f"{d} {s}" for d, s in deployments.items() if s != "HEALTHY"]
                return f"application {app} is {status}" + (
                    f" ({', '.join(broken)})" if broken else ""
                )
        return None


def read_state(api: client.ApiClient, name: str, namespace: str) -> ServiceState:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    status = obj.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    source = pending if pending.get("applicationStatuses") else active
    applications = {
        app: (
            s.get("status", ""),
            {d: v.get("status", "") for d, v in (s.get("serveDeploymentStatuses") or {}).items()},
        )
        for app, s in (source.get("applicationStatuses") or {}).items()
    }
    state = ServiceState(
        name=name,
        generation=obj["metadata"].get("generation", 0),
        observed_generation=status.get("observedGeneration", 0),
        service_status=status.get("serviceStatus", ""),
        conditions=[
            (c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
            for c in status.get("conditions") or []
        ],
        applications=applications,
        active_cluster=active.get("rayClusterName", ""),
        pending_cluster=pending.get("rayClusterName", ""),
    )
    clusters = [c for c in (state.active_cluster, state.pending_cluster) if c]
    core = client.CoreV1Api(api)
    for cluster in clusters:
        pods = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={cluster}")
        for pod in pods.items:
            labels = pod.metadata.labels or {}
            statuses = pod.status.container_statuses or []
            state.pods.append(
                PodState(
                    name=pod.metadata.name,
                    group=labels.get("ray.io/group", labels.get("ray.io/node-type", "")),
                    phase=pod.status.phase or "",
                    ready=bool(statuses) and all(s.ready for s in statuses),
                    restarts=sum(s.restart_count for s in statuses),
                )
            )
    return state


def format_state(s: ServiceState) -> str:
    header = (
        f"RayService {s.name}: {s.service_status or 'no status yet'} "
        f"(generation {s.generation}, observed {s.observed_generation})"
    )
    lines = [header]
    lines += [f"  condition {t}={v} {r}: {m}".rstrip(": ") for t, v, r, m in s.conditions]
    for app, (status, deployments) in s.applications.items():
        lines.append(f"  application {app}: {status}")
        lines += [f"    deployment {d}: {v}" for d, v in deployments.items()]
    lines.append(
        f"  ray cluster: {s.active_cluster or '-'}"
        + (f" (upgrading to {s.pending_cluster})" if s.pending_cluster else "")
    )
    for p in s.pods:
        lines.append(
            f"  pod {p.name} [{p.group}] {p.phase} {'ready' if p.ready else 'NOT READY'}"
            f" restarts={p.restarts}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class RolloutResult:
    outcome: str  # done, failed, timeout
    detail: str
    state: ServiceState


def rollout(
    api: client.ApiClient,
    manifest: dict[str, Any],
    namespace: str,
    timeout_s: float = 1_800.0,
    poll_s: float = 5.0,
    on_state: Callable[[ServiceState], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutResult:
    """Apply `manifest` (a RayService) and follow it to done, failed or timeout."""
    objects = client.CustomObjectsApi(api)
    name = manifest["metadata"]["name"]
    try:
        current = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status != 404:
            raise
        applied = objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest
        )
    else:
        # A replace, not a merge patch: settings the new manifest leaves out are removed.
        version = current["metadata"]["resourceVersion"]
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": version}}
        applied = objects.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body
        )
    target = applied["metadata"].get("generation", 0)
    deadline = clock() + timeout_s
    while True:
        state = read_state(api, name, namespace)
        on_state(state)
        if state.observed_generation >= target and (reason := state.failure):
            return RolloutResult("failed", reason, state)
        if state.observed_generation >= target and state.serving:
            return RolloutResult("done", f"generation {target} serving", state)
        if clock() >= deadline:
            return RolloutResult(
                "timeout", f"generation {target} not serving after {timeout_s:.0f} s", state
            )
        sleep(poll_s)
