"""The backlog autoscaler's rules, with a fake clock in every signal."""

import random

from cluster.config import AutoscalingConfig
from cluster.contracts import DemandSignal, Effort
from cluster.scheduling.autoscaling import BacklogAutoscaler, ScalingSignal

# One replica's worth of offered tokens/s: 15,000 tokens/s planned at 80%.
REPLICA = 12_000


def scaler(min_replicas=1, max_replicas=10, **config) -> BacklogAutoscaler:
    return BacklogAutoscaler(AutoscalingConfig(**config), min_replicas, max_replicas)


def run(a: BacklogAutoscaler, target: int, backlog: float, start: float, seconds: int, **kw):
    """Feed one signal per second; follow the decisions like Serve would. Returns the decisions."""
    decisions = []
    for t in range(seconds):
        d = a.decide(ScalingSignal(start + t, target, backlog, **kw))
        decisions.append(d)
        target = d.desired
    return decisions


def test_demand_is_backlog_over_replica_throughput_after_the_up_delay():
    a = scaler(upscale_delay_s=30, urgent_factor=10)
    decisions = run(a, 1, 3.5 * REPLICA, 0.0, 31)
    assert decisions[0].desired == 1 and decisions[0].reason == "up-delay"
    assert decisions[0].demand == 3.5
    assert decisions[30].desired == 4 and decisions[30].reason == "backlog"
    # Measured throughput for a heavier mix: the same backlog needs more replicas.
    heavy = scaler(upscale_delay_s=0)
    assert run(heavy, 1, 3.5 * REPLICA, 0.0, 1, tokens_per_replica_s=7_500)[0].desired == 7
    assert run(heavy, 7, 3.5 * REPLICA, 1.0, 1)[0].desired == 7  # the measurement is kept


def test_a_jump_to_twice_the_target_is_no_noise():
    a = scaler(upscale_delay_s=30, urgent_factor=2.0)
    assert run(a, 4, 6.5 * REPLICA, 0.0, 1)[0].desired == 4  # 7 wanted: under 2x, waits
    jump = run(scaler(upscale_delay_s=30, urgent_factor=2.0), 4, 8.5 * REPLICA, 0.0, 1)[0]
    assert jump.desired == 9 and jump.reason == "backlog"


def test_a_noisy_flat_load_does_not_flap():
    a = scaler(upscale_delay_s=30, downscale_delay_s=600)
    rng = random.Random(1)
    target, changes = 4, 0
    for t in range(3_600):  # an hour around 3.6 replicas' worth, +-15% noise each second
        backlog = 3.6 * REPLICA * rng.uniform(0.85, 1.15)
        d = a.decide(ScalingSignal(float(t), target, backlog))
        changes += d.desired != target
        target = d.desired
    assert changes == 0 and target == 4


def test_scale_down_needs_a_margin_and_the_down_delay():
    a = scaler(downscale_delay_s=600, downscale_margin=0.2)
    assert run(a, 5, 4.5 * REPLICA, 0.0, 700)[-1].desired == 5  # 5 wanted: nothing to do
    a = scaler(downscale_delay_s=600, downscale_margin=0.2)
    decisions = run(a, 5, 2.5 * REPLICA, 0.0, 601)
    assert decisions[599].desired == 5 and decisions[599].reason == "down-delay"
    assert decisions[600].desired == 4  # one replica per release by default


def test_each_release_waits_out_the_down_delay_again():
    a = scaler(downscale_delay_s=600, downscale_margin=0.2)
    decisions = run(a, 8, 2.5 * REPLICA, 0.0, 3_000)
    released_at = [t for t in range(1, 3_000) if decisions[t].desired < decisions[t - 1].desired]
    assert released_at == [600, 1201, 1802, 2403]  # 7, 6, 5, 4: then 3 is within the margin
    assert [decisions[t].desired for t in released_at] == [7, 6, 5, 4]
    at_once = scaler(downscale_delay_s=600, downscale_margin=0.2, downscale_max_replicas=None)
    assert run(at_once, 8, 2.5 * REPLICA, 0.0, 601)[600].desired == 3


def test_bounds_and_warm_spares():
    a = scaler(min_replicas=2, max_replicas=6, upscale_delay_s=0, downscale_delay_s=0,
               downscale_max_replicas=None)  # fmt: skip
    assert run(a, 2, 50 * REPLICA, 0.0, 1)[0].desired == 6
    assert run(a, 6, 50 * REPLICA, 1.0, 1)[0].reason == "max"
    assert run(a, 6, 0, 2.0, 1)[0].desired == 2  # never below min_replicas
    spare = scaler(upscale_delay_s=0, warm_spares=1)
    assert run(spare, 1, 2 * REPLICA, 0.0, 1)[0].desired == 3


def test_missed_slos_add_a_replica_even_when_the_backlog_looks_fine():
    a = scaler(upscale_delay_s=0, slo_attainment_floor=0.9)
    attainment = {Effort.LOW: 0.97, Effort.MEDIUM: 0.95, Effort.HIGH: 0.80}
    starting = run(scaler(upscale_delay_s=0), 4, 2 * REPLICA, 0.0, 1, attainment=attainment,
                   starting=1)[0]  # fmt: skip
    assert starting.desired == 4  # one is still starting: its effect is not visible yet
    d = run(a, 3, 2 * REPLICA, 0.0, 1, attainment=attainment)[0]
    assert d.desired == 4 and d.reason == "slo"


def test_scale_to_zero_after_a_long_idle_spell_and_wake_at_once():
    a = scaler(
        min_replicas=1,
        scale_to_zero=True,
        idle_before_zero_s=900,
        replica_start_s=120,
        downscale_delay_s=60,
    )
    run(a, 1, REPLICA / 2, 0.0, 10)  # busy until t=9
    idle = run(a, 1, 0, 10.0, 1_000)
    zero_at = next(t for t, d in enumerate(idle) if d.desired == 0)
    assert 900 + 60 - 1 <= zero_at <= 900 + 60 + 1  # idle 900 s, then the down delay
    woken = a.decide(ScalingSignal(2_000.0, 0, 0, waiting_requests=1))
    assert woken.desired == 1 and woken.reason == "wake"
    floor = scaler(min_replicas=2, scale_to_zero=True, downscale_delay_s=0,
                   downscale_max_replicas=None)  # fmt: skip
    assert run(floor, 4, REPLICA / 2, 0.0, 1)[0].desired == 2  # busy: min_replicas holds
    # The idle floor never undercuts a cold start: with idle_before_zero_s shorter than the
    # start time, zero comes only after replica_start_s.
    short = scaler(scale_to_zero=True, idle_before_zero_s=10, replica_start_s=120,
                   downscale_delay_s=0)  # fmt: skip
    decisions = run(short, 1, 0, 0.0, 200)
    assert next(t for t, d in enumerate(decisions) if d.desired == 0) == 120


def test_queued_tokens_add_to_the_projected_backlog():
    a = scaler(upscale_delay_s=0)
    # 2 replicas' worth offered, plus a queue of 1.5 replicas' worth over the 60 s horizon.
    queued = 1.5 * REPLICA * 60
    assert run(a, 1, 2 * REPLICA, 0.0, 1, queued_tokens=queued)[0].desired == 4


def test_the_fleet_signal_sums_the_gateways_and_keeps_the_worst_attainment():
    demands = [
        DemandSignal(1_000.0, 50.0, 2, 9_000.0, ((Effort.LOW, 0.99), (Effort.HIGH, 0.8))),
        DemandSignal(500.0, 10.0, 0.4, None, ((Effort.LOW, 0.90),)),  # not saturated: no rate
    ]
    s = ScalingSignal.of(demands, now=5.0, target=3, serving=2)
    assert (s.offered_tokens_s, s.queued_tokens, s.waiting_requests) == (1_500, 60, 3)
    assert s.tokens_per_replica_s == 4_500  # the gateways' capacity, per serving replica
    assert s.attainment == {Effort.LOW: 0.90, Effort.HIGH: 0.8} and s.starting == 1
    # No gateway saturated, no replica serving: no throughput measured; Serve's queue floors.
    idle = ScalingSignal.of([demands[1]], now=5.0, target=0, serving=0, waiting_requests=4)
    assert idle.tokens_per_replica_s is None and idle.waiting_requests == 4


def test_a_demand_signal_survives_serves_metrics_shape():
    signal = DemandSignal(1_000.0, 50.0, 2, 9_000.0, ((Effort.LOW, 0.99),))
    assert DemandSignal.from_metrics(signal.to_metrics()) == signal
    quiet = DemandSignal(0.0, 0.0, 0)
    assert DemandSignal.from_metrics(quiet.to_metrics()) == quiet
