"""The Ray Serve settings a cluster config implies, as the environment every Ray process of the
cluster starts with: `local_cluster` sets it before Ray starts, the chart sets it on every pod
(a chart test checks the two agree).

Ray Serve reads these flags once per process, at import, so they cannot travel in the Serve
config document. `RAY_SERVE_THROUGHPUT_OPTIMIZED` is Serve's own bundle for streaming-heavy
apps: the handle's router on the replica's main event loop, direct ingress, buffered request
logs, the garbage collector frozen after start-up. Two of its pieces stay off:
- user code on the main loop, by measurement: in `make bench-engine` (stream interval 8) it gave
  0.73-0.79x vLLM's tokens/s at 1 stream in four runs, against 0.85-1.09x with user code on its
  own thread, and no clear change at 16 streams (the failure that first kept it off was the mock
  engine's own, since fixed);
- gRPC between deployments, for a failure our tests found in Ray 2.60: API-key limits then stop
  holding across two gateway replicas (tests/quotas: each replica admits its own full quota, as
  if the ledger sync never ran).
"""

from __future__ import annotations

from cluster.config import ClusterConfig

# Gateway replicas that stop keep serving their open connections this long (Serve's default,
# 30 s, gives an external load balancer time to notice); HAProxy re-reads its targets at once.
DRAIN_S = 5


def serve_env(config: ClusterConfig) -> dict[str, str]:
    env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
    }
    if config.gateway.ingress == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    else:  # Serve's Python proxy takes the traffic: gateway replicas open no port of their own
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    return env
