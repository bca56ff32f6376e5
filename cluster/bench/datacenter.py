"""`make bench-datacenter`: a data-center day, up to 64 engine replicas behind 8 gateways.

Ours (each of 8 gateways runs the effort-aware scheduler, engines refuse what they have no seat
for, the backlog autoscaler) against Ray Serve's defaults (each gateway pushes by power of two
choices into the engines' first-come queues, Serve's ongoing-requests autoscaler at the target
KubeRay's LLM sample uses), both up to 64 x H100 TP2 on the same diurnal day of the reference
mix: trough 25% at 04:00, peak at 16:00 offering 90% of what 64 replicas serve.

Such a day is ~20 million requests, too many to follow one by one here, so it is measured twice:
- the whole day, in one-second steps, on the fluid model (`cluster/sim/fluid.py`) through each
  autoscaler: the replicas it keeps hour by hour and the GPU-hours;
- windows of it at four hours, on the discrete-event simulator (every request, engine step and
  late load report, 8 gateways), each starting from the fleet that autoscaler kept at that hour
  with the autoscaler in the loop: SLO attainment per effort and the share shed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cluster.bench.autoscaling import SATURATION_RPS
from cluster.bench.scheduling import REPORTS
from cluster.config import ClusterConfig
from cluster.sim.fleets import Autoscaler, Backlog, OngoingRequests, SimFleet
from cluster.sim.fluid import run_day
from cluster.sim.simulator import SimResult, Simulation
from cluster.sim.workload import ClusterSpec, Topology, WorkloadSpec, diurnal, rate_factor

REPLICAS = (1, 64)
GATEWAYS = 8
START_S = 120.0  # a GPU replica's cold start (ANCHORS.md)
PEAK_RPS = 0.9 * REPLICAS[1] * SATURATION_RPS / 8  # 8 replicas' saturation, 64 replicas' peak
SERVE_TARGET = 64  # ongoing requests per replica: KubeRay's LLM sample
HOURS = (4, 10, 16, 20)  # trough, rising, peak, falling
# (name, placement policy, topology, autoscaler)
PLANS: dict[str, tuple[str, Topology, Callable[[ClusterConfig], Autoscaler]]] = {
    "ours": (
        "effort_aware",
        Topology(gateways=GATEWAYS, engine_refuses=True, reports_in_replies=True, **REPORTS),
        lambda config: Backlog(config, *REPLICAS),
    ),
    f"serve (power of two, ongoing@{SERVE_TARGET})": (
        "power_of_two",
        Topology(gateways=GATEWAYS, **REPORTS),
        lambda config: OngoingRequests(config, *REPLICAS, target_ongoing_requests=SERVE_TARGET),
    ),
}


@dataclass(frozen=True)
class Window:
    hour: int
    rate: float  # offered, req/s
    replicas: int  # kept at the start, from the fluid day
    result: SimResult
    fleet: SimFleet

    def attainment(self) -> dict[str, float]:
        return {e: v["slo_attainment"] for e, v in self.result.summary()["efforts"].items()}

    def shed(self) -> float:
        s = self.result.summary()
        return s["rejected"] / max(s["offered"], 1)

    def replicas_end(self) -> int:
        return self.fleet.trace[-1].target if self.fleet.trace else self.replicas


def window(plan: str, hour: int, replicas: int, duration_s: float) -> Window:
    policy, topology, autoscaler = PLANS[plan]
    config = ClusterConfig()
    rate = PEAK_RPS * rate_factor(diurnal(), hour * 3600.0)
    workload = WorkloadSpec(rate=rate, duration_s=duration_s)
    cluster = ClusterSpec(replicas=replicas, topology=topology)
    fleet = SimFleet(autoscaler(config), START_S)
    result = Simulation(workload, cluster, policy, config, fleet).run().without_prompts()
    return Window(hour, rate, replicas, result, fleet)


def run(duration_s: float = 180.0, hours: tuple[int, ...] = HOURS) -> None:
    config = ClusterConfig()
    day = WorkloadSpec(rate=PEAK_RPS, duration_s=86_400, rate_profile=diurnal())
    print(
        f"data-center day: {REPLICAS[0]}-{REPLICAS[1]} x H100 TP2 replicas, {GATEWAYS} gateways "
        f"({REPORTS['report_period_s']:g} s load reports), peak {PEAK_RPS:.0f} req/s at 16:00, "
        f"trough 25% at 04:00; windows of {duration_s:g} s at {', '.join(map(str, hours))} h"
    )
    for plan, (_, _, autoscaler) in PLANS.items():
        fluid = run_day(autoscaler(config), day, ClusterSpec(), config, START_S, REPLICAS[1] // 2)
        kept = [k for _, k, _ in fluid.trace]
        print(
            f"\n{plan}: {fluid.gpu_hours:,.0f} GPU-hours over the day, replicas "
            f"{min(kept)}-{max(kept)}; the fluid model's misses {fluid.missed / fluid.offered:.1%}"
        )
        for hour in hours:
            w = window(plan, hour, kept[hour * 3600], duration_s)
            s = w.result.summary()
            print(
                f"  {hour:02d}:00 {w.rate:.0f} req/s on "
                f"{w.replicas}->{w.replicas_end()} replicas: attainment "
                + " / ".join(f"{e} {v:.1%}" for e, v in w.attainment().items())
                + f", shed {w.shed():.1%}, SLO goodput {s['goodput_rps']:.1f} req/s"
            )
