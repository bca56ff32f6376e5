"""`make bench-sched`: the effort-aware scheduler against the peers' policies, in simulation.

Per regime (default 8 x H100 TP2; KV-bound 16 x H100 TP1 with ~200k KV tokens; bursty on/off), it
measures the saturation throughput, finds power-of-two's knee (highest rate with >= 90% SLO
attainment in every effort class), and prints tail latency per effort there, TTFT below the knee,
goodput in overload (shedding and effort degradation), and the core's decisions per second.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from cluster.config import ClusterConfig, Effort, RouterConfig
from cluster.engine.base import LoadReport
from cluster.scheduling.scheduler import Scheduler
from cluster.sim.simulator import SimResult, simulate
from cluster.sim.workload import Arrivals, ClusterSpec, WorkloadSpec

POLICIES = ["power_of_two", "round_robin", "least_outstanding", "prefix_affinity", "oracle",
            "effort_aware"]  # fmt: skip
REGIMES = {
    "default": (ClusterSpec(), Arrivals()),
    "kv_bound": (
        ClusterSpec(replicas=16, tensor_parallel_size=1, kv_capacity_tokens=200_000),
        Arrivals(),
    ),
    "bursty": (ClusterSpec(), Arrivals(kind="onoff", on_s=20, off_s=20)),
}


def _run(cluster: ClusterSpec, arrivals: Arrivals, rate: float, policy: str, duration: float,
         config: ClusterConfig) -> SimResult:  # fmt: skip
    workload = WorkloadSpec(rate=rate, duration_s=duration, arrivals=arrivals)
    return simulate(workload, cluster, policy, config)


def _attainment(result: SimResult) -> float:
    efforts = result.summary()["efforts"]
    return min((v["slo_attainment"] for v in efforts.values()), default=0.0)


def _saturation(cluster: ClusterSpec, arrivals: Arrivals, duration: float) -> float:
    """Completed requests per second under far more load than the cluster can serve."""
    result = _run(cluster, arrivals, 200.0, "power_of_two", duration, ClusterConfig())
    done = [
        r for r in result.all_records if r.finished and result.warmup_s <= r.finished <= duration
    ]
    return len(done) / result.window_s


def _knee(run: Callable[[float], SimResult], low: float, high: float, steps: int) -> float:
    """Highest rate in [low, high] with >= 90% attainment in every class (bisection)."""
    if _attainment(run(low)) < 0.9:
        return low
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if _attainment(run(mid)) >= 0.9 else (low, mid)
    return low


def _efforts_line(result: SimResult) -> str:
    s = result.summary()["efforts"]
    return "  ".join(
        f"{e}: p50 {v['ttft_p50_s']:.2f}s p99 {v['ttft_p99_s']:.2f}s att {v['slo_attainment']:.0%}"
        for e, v in s.items()
    )


def decisions_per_second(replicas: int = 64, queued: int = 10_000) -> float:
    """Scheduler core on one core: requests released per second from a deep queue."""
    config = ClusterConfig()
    router = config.router.model_copy(update={"engine_queue_limit": 1_000_000})
    scheduler = Scheduler(router, config.efforts)
    rng = random.Random(0)
    efforts = list(Effort)
    for i in range(queued):
        t = scheduler.ticket(f"r{i}", rng.choice(efforts), f"t{i % 10}", rng.randint(100, 2000),
                             8192, now=i * 1e-4, prefix_key=f"p{i % 50}")  # fmt: skip
        scheduler.queue.push(t)
    for k in range(replicas):
        scheduler.report(k, LoadReport(0, 0, 0, 10**9, 0, 10**6, 0.0))
    start = time.perf_counter()
    released = len(scheduler.dispatch(now=2.0))
    return released / (time.perf_counter() - start)


def run(
    duration: float = 180.0, bisection_steps: int = 5, regimes: list[str] | None = None
) -> None:
    print(f"scheduling benchmark: {duration:.0f} s of simulated traffic per run; policies: "
          f"{', '.join(POLICIES)}")  # fmt: skip
    for name in regimes or list(REGIMES):
        cluster, arrivals = REGIMES[name]
        config = ClusterConfig()
        sat = _saturation(cluster, arrivals, duration)
        print(f"\n== {name}: {cluster.replicas} replicas, TP{cluster.tensor_parallel_size}, "
              f"KV {cluster.kv_capacity_tokens:,} tokens/replica, {arrivals.kind} arrivals; "
              f"saturation {sat:.1f} req/s")  # fmt: skip

        def at(rate: float, policy: str, cfg: ClusterConfig = config, cluster=cluster,
               arrivals=arrivals) -> SimResult:  # fmt: skip
            return _run(cluster, arrivals, rate, policy, duration, cfg)

        knee = _knee(lambda r: at(r, "power_of_two"), 0.3 * sat, sat, bisection_steps)
        print(f"power-of-two knee: {knee:.1f} req/s ({knee / sat:.0%} of saturation)")
        pow2 = at(knee, "power_of_two").summary()["efforts"]
        for policy in POLICIES:
            result = at(knee, policy)
            high = result.summary()["efforts"].get("high", {})
            low_ratio = result.summary()["efforts"]["low"]["ttft_p99_s"] / pow2["low"]["ttft_p99_s"]
            print(f"  {policy:<18} {_efforts_line(result)}  | high queue-wait p99 "
                  f"{high.get('queue_wait_p99_s', 0):.2f}s | low p99 TTFT {low_ratio:.2f}x pow2")  # fmt: skip
        for share in (0.5, 0.9):
            base = at(share * sat, "power_of_two").summary()["efforts"]
            ours = at(share * sat, "effort_aware").summary()["efforts"]
            ratios = "  ".join(
                f"{e}: {ours[e]['ttft_p99_s']:.2f}s vs {base[e]['ttft_p99_s']:.2f}s "
                f"({ours[e]['ttft_p99_s'] / base[e]['ttft_p99_s'] - 1:+.0%})"
                for e in ours
            )
            print(f"below the knee, {share:.0%} of saturation, p99 TTFT ours vs pow2: {ratios}")
        degrade = ClusterConfig(router=RouterConfig(degrade_effort=True))
        for load in (1.5, 2.0):
            rate = load * sat
            rows = [("power_of_two", at(rate, "power_of_two")),
                    ("effort_aware", at(rate, "effort_aware")),
                    ("effort_aware+degrade", at(rate, "effort_aware", degrade))]  # fmt: skip
            for label, result in rows:
                s = result.summary()
                within = sum(result.meets_slo(r) for r in result.served())
                print(f"overload {load:.1f}x ({rate:.1f} req/s) {label:<22} goodput "
                      f"{s['goodput_rps']:.1f} req/s ({s['goodput_rps'] / sat:.2f}x saturation), "
                      f"completed within SLO {within}, rejected {s['rejected'] / s['offered']:.0%}")  # fmt: skip
        best = {}
        for policy in ("power_of_two", "least_outstanding", "effort_aware"):
            best[policy] = _knee(
                lambda r, p=policy: at(r, p), 0.3 * sat, 1.1 * sat, bisection_steps
            )
        line = "  ".join(f"{p}: {v:.1f} ({v / sat:.0%})" for p, v in best.items())
        print(f"max rate at 90% attainment in every class: {line}")
    print(
        f"\nscheduler core: {decisions_per_second():,.0f} decisions/s (64 replicas, 10,000 queued)"
    )
