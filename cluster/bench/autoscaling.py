"""`make bench-autoscale`: our backlog autoscaler against Ray Serve's ongoing-requests policy.

Both run with the same bounds (1-16 replicas of H100 TP2), delays (up 30 s, down 600 s), modelled
GPU replica start time (120 s, ANCHORS.md) and placement (the effort-aware scheduler); Serve's
policy is its own `replica_queue_length_autoscaling_policy` at targets 16 / 32 / 64 (KubeRay's LLM
sample) / 128 ongoing requests per replica.

- Step: 8 replicas serve 30% of their capacity for 20 minutes (time to settle), then the load
  jumps to 120% for 15 minutes; the discrete-event simulator counts requests that miss an SLO or
  are shed, from the step on.
- Day: a 24-hour diurnal trace (trough 25% at 04:00, peak 100% of 90% of the 8 replicas' capacity
  at 16:00) on the fluid model (`cluster/sim/fluid.py`), for GPU-hours.

Ours runs twice: as configured (lean), and with `warm_spares` = 3 (cover for a cold start). Each
Serve target is then judged against the ours that fits its GPU-hours (at most 1.05x): the goal is
half its step misses at that cost.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from rich.progress import Progress

from cluster.config import ClusterConfig
from cluster.sim.fleets import Autoscaler, Backlog, OngoingRequests, SimFleet
from cluster.sim.fluid import DayResult, run_day
from cluster.sim.simulator import Simulation, meets_slo
from cluster.sim.workload import ClusterSpec, WorkloadSpec, diurnal

START_S = 120.0
BOUNDS = (1, 16)
SERVE_TARGETS = (16, 32, 64, 128)
SPARES = 3
COST_SLACK = 1.05  # "at most 1.05x the GPU-hours"
SATURATION_RPS = 51.8  # 8 x H100 TP2 on the reference mix (make bench-sched)
WARM_S, STEP_S = 1_200.0, 900.0


def _autoscalers(config: ClusterConfig) -> list[Autoscaler]:
    spares = config.model_copy(
        update={"autoscaling": config.autoscaling.model_copy(update={"warm_spares": SPARES})}
    )
    ours = [Backlog(config, *BOUNDS), Backlog(spares, *BOUNDS, name=f"backlog+{SPARES} spares")]
    return ours + [
        OngoingRequests(config, *BOUNDS, target_ongoing_requests=t) for t in SERVE_TARGETS
    ]


def step(autoscaler: Autoscaler, config: ClusterConfig) -> tuple[int, int, float, SimFleet]:
    """(SLO-missing or shed requests from the step on, requests then, GPU-hours, the fleet)."""
    workload = WorkloadSpec(
        rate=SATURATION_RPS,
        duration_s=WARM_S + STEP_S,
        warmup_share=0,
        rate_profile=[(0, 0.3), (WARM_S, 0.3), (WARM_S, 1.2), (WARM_S + STEP_S, 1.2)],
    )
    fleet = SimFleet(autoscaler, START_S)
    sim = Simulation(workload, ClusterSpec(), "effort_aware", config, fleet)
    result = sim.run()
    after = [r for r in result.all_records if r.request.arrival >= WARM_S]
    missed = sum(not meets_slo(r, result.slo) for r in after)
    tp = sim.cluster.tensor_parallel_size
    gpu_hours = sum(r.stopped_at - r.requested_at for r in sim.replicas) * tp / 3600
    return missed, len(after), gpu_hours, fleet


def day(autoscaler: Autoscaler, config: ClusterConfig) -> DayResult:
    workload = WorkloadSpec(rate=0.9 * SATURATION_RPS, duration_s=86_400, rate_profile=diurnal())
    return run_day(autoscaler, workload, ClusterSpec(), config, START_S, initial_replicas=8)


def _plot(path: Path, steps: dict[str, SimFleet], days: dict[str, DayResult]) -> None:
    fig = Figure(figsize=(13, 8))
    (ax_r, ax_b), (ax_d, ax_db) = fig.subplots(2, 2)
    for name, fleet in steps.items():
        t = [s.t / 60 for s in fleet.trace]
        ax_r.step(t, [s.target for s in fleet.trace], where="post", label=name)
        ax_b.plot(t, [s.backlog_tokens / 1e6 for s in fleet.trace], label=name)
    for name, result in days.items():
        t = [x[0] / 3600 for x in result.trace[::60]]
        ax_d.step(t, [x[1] for x in result.trace[::60]], where="post", label=name)
        ax_db.plot(t, [x[2] / 1e6 for x in result.trace[::60]], label=name)
    for ax in (ax_r, ax_b):
        ax.axvline(WARM_S / 60, color="grey", linestyle=":")
    ax_r.set(title="step 30% -> 120%: replicas kept", xlabel="minutes", ylabel="replicas")
    ax_b.set(title="step: token backlog", xlabel="minutes", ylabel="million tokens")
    ax_d.set(title="diurnal day: replicas kept", xlabel="hour", ylabel="replicas")
    ax_db.set(title="day: token backlog", xlabel="hour", ylabel="million tokens")
    for ax in (ax_r, ax_b, ax_d, ax_db):
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(out_dir: Path = Path("bench-results")) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ClusterConfig()
    a = config.autoscaling
    print(
        f"autoscaling: replicas {BOUNDS[0]}-{BOUNDS[1]} x H100 TP2, start {START_S:.0f} s, "
        f"delays up {a.upscale_delay_s:.0f} s / down {a.downscale_delay_s:.0f} s"
    )
    rows, steps, days = {}, {}, {}
    pairs = list(zip(_autoscalers(config), _autoscalers(config), strict=True))  # fresh state each
    with Progress(transient=True) as bar:
        task = bar.add_task("simulating", total=2 * len(pairs))
        for for_step, for_day in pairs:
            missed, n, step_gpu_h, fleet = step(for_step, config)
            bar.advance(task)
            result = day(for_day, config)
            bar.advance(task)
            rows[for_step.name] = (missed, n, step_gpu_h, result.gpu_hours)
            steps[for_step.name], days[for_step.name] = fleet, result
    print(f"\n{'policy':<22} {'step: missed SLO or shed':>26} {'step GPU-h':>11} {'day GPU-h':>10}")
    for name, (missed, n, step_gpu_h, day_gpu_h) in rows.items():
        print(
            f"{name:<22} {missed:>10,} of {n:>9,} ({missed / n:5.1%}) {step_gpu_h:>11.1f} "
            f"{day_gpu_h:>10.1f}"
        )
    ours = [r for r in rows if r.startswith("backlog")]
    theirs = [r for r in rows if r not in ours]
    print(
        f"\nat no more than {COST_SLACK}x Serve's day GPU-hours, ours with the fewest step misses:"
    )
    for name in theirs:
        missed, _, _, day_gpu_h = rows[name]
        fits = [r for r in ours if rows[r][3] <= COST_SLACK * day_gpu_h]
        if not fits:
            print(f"  {name:<20} none of ours fits its GPU-hours")
            continue
        best = min(fits, key=lambda r: rows[r][0])
        ratio = f"{rows[best][0] / missed:.2f}x" if missed else "(it missed none)"
        goal = ("met" if rows[best][0] <= missed / 2 else "not met") if missed else "n/a"
        print(
            f"  {name:<20} {best:<18} step misses {ratio:>16}, day GPU-h "
            f"{rows[best][3] / day_gpu_h:.2f}x  goal (half the misses): {goal}"
        )
    cheapest = min(theirs, key=lambda r: rows[r][3])
    print(f"Serve's cheapest target over the day (its best): {cheapest}")
    png = out_dir / "autoscale.png"
    keep = (*ours, "serve_ongoing@64", cheapest)
    _plot(png, {k: steps[k] for k in keep}, {k: days[k] for k in keep})
    print(f"plot: {png}")
