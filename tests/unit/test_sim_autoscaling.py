"""The autoscaled simulators: a fleet in the discrete-event loop, and the fluid day model."""

import pytest

from cluster.config import ClusterConfig
from cluster.sim.fleets import Backlog, OngoingRequests, SimFleet
from cluster.sim.fluid import run_day
from cluster.sim.simulator import Simulation
from cluster.sim.workload import ClusterSpec, Topology, WorkloadSpec

CONFIG = ClusterConfig(autoscaling={"upscale_delay_s": 5, "downscale_delay_s": 30})
STEP = [(0, 0.2), (60, 0.2), (60, 1.0), (180, 1.0)]  # x rate: a step up at 60 s


def test_a_fleet_follows_a_step_with_cold_starts_and_drains():
    workload = WorkloadSpec(rate=12, duration_s=180, warmup_share=0, rate_profile=STEP)
    fleet = SimFleet(Backlog(CONFIG, 1, 4), start_s=20)
    sim = Simulation(workload, ClusterSpec(replicas=1), "effort_aware", CONFIG, fleet)
    result = sim.run()
    added = [r for r in sim.replicas if r.requested_at > 0]
    assert added and min(r.requested_at for r in added) >= 60  # it scaled up after the step
    assert all(r.ready_at - r.requested_at == 20 for r in added)  # each after a cold start
    first_serving = min(r.ready_at for r in added)
    assert all(s.serving == 1 for s in fleet.trace if s.t < first_serving)
    for r in result.all_records:  # nothing lost: every request ran to its end or was shed
        assert r.rejected or r.generated == r.request.output_tokens
    assert all(r.stopped_at is not None and r.stopped_at >= r.requested_at for r in sim.replicas)


def test_the_fluid_day_charges_every_kept_replica_and_is_deterministic():
    workload = WorkloadSpec(rate=40, duration_s=600, rate_profile=[(0, 0.3), (300, 1.0)])
    days = [run_day(a, workload, ClusterSpec(), CONFIG, 120.0, initial_replicas=2)
            for a in (Backlog(CONFIG, 1, 16), Backlog(CONFIG, 1, 16))]  # fmt: skip
    assert days[0].gpu_hours == days[1].gpu_hours
    kept = [k for _, k, _ in days[0].trace]
    assert days[0].gpu_hours == pytest.approx(sum(kept) * 2 / 3600)  # TP2, none draining
    assert kept[-1] > kept[0]  # the ramp raised the fleet
    serve = run_day(OngoingRequests(CONFIG, 1, 16, 64), workload, ClusterSpec(), CONFIG, 120.0, 2)
    assert serve.gpu_hours > 0 and serve.offered == days[0].offered


def test_serves_default_routing_follows_its_own_autoscaler_up_and_down():
    """Power of two choices under Serve's ongoing-requests autoscaler, two gateways on late
    reports: it draws among replicas serving, none still starting or scaled down."""
    config = CONFIG.model_copy(
        update={"autoscaling": CONFIG.autoscaling.model_copy(update={"downscale_delay_s": 20})}
    )
    workload = WorkloadSpec(
        rate=12, duration_s=240, warmup_share=0, rate_profile=[(0, 1.0), (120, 1.0), (120, 0.1)]
    )
    fleet = SimFleet(OngoingRequests(config, 1, 4, target_ongoing_requests=8), start_s=20)
    top = Topology(gateways=2, report_period_s=0.5, report_delay_s=0.05)
    cluster = ClusterSpec(replicas=1, topology=top)
    sim = Simulation(workload, cluster, "power_of_two", config, fleet)
    result = sim.run()
    targets = [s.target for s in fleet.trace]
    assert max(targets) > 1 and targets[-1] < max(targets)  # up under load, down after it
    assert any(r.draining for r in sim.replicas)
    for r in result.all_records:  # nothing lost, nothing placed where it could not run
        assert r.generated == r.request.output_tokens
        assert r.first_token >= 0
