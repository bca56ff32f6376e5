"""`make bench-overload`: three times the cluster's capacity for 60 s, live, then normal service.

A local Ray cluster (two mock engine replicas of eight seats, outputs 10x shorter than the
reference mix, as `make bench-live`) is first measured closed-loop (16 clients back to back: the
requests per second it completes), then takes an open-loop Poisson load at 3x that for 60 s. The
mock runs at a quarter of H100 TP2 speed with every SLO stretched by the same factor (the same
schedule in slower time): at full speed, 3x capacity streams more tokens than two CPU cores can
carry through the proxy, the gateway and the engines, and the figures would measure the CPU.
Printed: admitted goodput (requests within both SLOs per second), the 429 share, each effort's
share of its offered requests served within SLO against the overall share (the effort floor's
goal: none under half), p99 TTFT of admitted requests per effort against its SLO, 5xx count, and
the peak memory of the cluster. Then ten requests right after the overload must all be served
within their SLOs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial

import httpx

from cluster.bench.fairness import FLOOR_GOAL, floor_cost_bound
from cluster.bench.live import Reply, beside, chat_once, drive, mock_config, quantile, user
from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.serve.local import local_cluster
from cluster.sim.workload import Lognormal, WorkloadSpec

SEATS = 16
SLOWDOWN = 4.0  # mock time scale: 4x slower than an H100; SLOs stretched alike
FACTOR, DURATION_S, CALIBRATE_S = 3.0, 60.0, 20.0


async def _closed_loop(url: str, seconds: float) -> float:
    """Requests completed per second by `SEATS` clients sending back to back (the mix's shares)."""
    mix = [Effort.LOW] * 10 + [Effort.MEDIUM] * 7 + [Effort.HIGH] * 3
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            n = i
            while time.perf_counter() < stop:
                outcome = await chat_once(client, mix[n % len(mix)], f"u{i}", user("word " * 60))
                done += outcome.status == 200
                n += SEATS

        await asyncio.gather(*(worker(i) for i in range(SEATS)))
    return done / seconds


def _sample_rss(cluster, peak: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], cluster.rss_bytes())
        stop.wait(1.0)


def _after(url: str) -> list[Reply]:
    async def go() -> list[Reply]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return [
                await chat_once(client, Effort.LOW, "after", user("Why is the sky blue?"))
                for _ in range(10)
            ]

    return asyncio.run(go())


def _slowed_config(admission_slack: float | None, min_effort_share: float | None) -> ClusterConfig:
    data = mock_config("effort_aware").to_args()
    data["engine"]["mock"]["time_scale"] = SLOWDOWN
    if admission_slack is not None:
        data["router"]["admission_slack"] = admission_slack
    if min_effort_share is not None:
        data["router"]["min_effort_share"] = min_effort_share
    for effort in data["efforts"].values():
        effort["ttft_slo_s"] *= SLOWDOWN
        effort["itl_slo_s"] *= SLOWDOWN
    return ClusterConfig.model_validate(data)


def run(
    admission_slack: float | None = None,
    min_effort_share: float | None = None,
    rate: float | None = None,
) -> None:
    """`rate` fixes the offered load, so runs that differ in one setting see the same traffic
    (the closed-loop measurement varies by ~25% between runs on a shared machine)."""
    config = _slowed_config(admission_slack, min_effort_share)
    with local_cluster(config) as cluster:
        capacity = asyncio.run(_closed_loop(cluster.url, CALIBRATE_S))
        rate = rate or FACTOR * capacity
        print(
            f"overload (mock at 1/{SLOWDOWN:g} H100 speed, SLOs x{SLOWDOWN:g}, admission slack "
            f"{config.router.admission_slack:g}, effort floor {config.router.min_effort_share:g}"
            f"): capacity "
            f"{capacity:.2f} req/s measured closed-loop ({SEATS} clients, {CALIBRATE_S:g} s); "
            f"offering {rate:.2f} req/s ({rate / capacity:.1f}x) for {DURATION_S:g} s"
        )
        workload = WorkloadSpec(
            rate=rate, duration_s=DURATION_S, prompt_tokens=Lognormal(median=60, sigma=0.5), seed=11
        )
        peak = [cluster.rss_bytes()]
        with beside(partial(_sample_rss, cluster, peak)):
            outcomes = asyncio.run(drive(cluster.url, workload))
        after = _after(cluster.url)
    _report(outcomes, after, config, peak[0], rate / capacity)


def _report(outcomes: list[Reply], after: list[Reply], config, peak_rss: int, load: float) -> None:
    served = [o for o in outcomes if o.status == 200]
    shed = sum(o.status == 429 for o in outcomes)
    errors = sum(o.status >= 500 for o in outcomes)
    other = len(outcomes) - len(served) - shed - errors

    def meets(o: Reply) -> bool:
        return o.status == 200 and config.efforts[o.effort].met(o.ttft_s, o.mean_itl_s)

    good = sum(meets(o) for o in outcomes)
    print(
        f"\n{len(outcomes)} requests: {len(served)} admitted and served, {shed} shed with 429 "
        f"({shed / len(outcomes):.1%}), {errors} 5xx, {other} other"
    )
    print(
        f"admitted goodput {good / DURATION_S:.2f} req/s within both SLOs "
        f"({good / max(len(served), 1):.1%} of admitted)"
    )
    overall = good / max(len(outcomes), 1)
    for effort in Effort:
        offered = sum(o.effort is effort for o in outcomes)
        within = sum(meets(o) for o in outcomes if o.effort is effort)
        share = within / max(offered, 1)
        print(
            f"  {effort.value:<7} served within SLO {within:4} of {offered:4} offered "
            f"({share:4.0%}; {share / max(overall, 1e-9):4.2f}x the overall {overall:.0%})"
        )
    mix = {e: sum(o.effort is e for o in outcomes) / len(outcomes) for e in Effort}
    cost = {e: p.output_tokens.median_tokens for e, p in config.efforts.items()}
    bound = floor_cost_bound(mix, cost, load, FLOOR_GOAL)
    print(
        f"  capacity bound at {load:.1f}x: every effort at >= {FLOOR_GOAL:g}x the overall share "
        f"costs at least {bound:.0%} of the most any schedule serves (cluster.bench.fairness)"
    )
    for effort in Effort:
        rows = [o for o in served if o.effort is effort]
        ttfts = [o.ttft_s for o in rows]
        slo = config.efforts[effort].ttft_slo_s
        itl = [o.mean_itl_s * 1000 for o in rows]
        ttft_ok = sum(t <= slo for t in ttfts) / max(len(rows), 1)
        print(
            f"  {effort.value:<7} admitted {len(rows):4}  TTFT p50 {quantile(ttfts, 50):5.2f} s "
            f"p99 {quantile(ttfts, 99):6.2f} s (SLO {slo:g} s, {quantile(ttfts, 99) / slo:4.2f}x, "
            f"{ttft_ok:4.0%} within)  mean ITL p50 {quantile(itl, 50):5.1f} ms p99 {quantile(itl, 99):5.1f} "
            f"ms  both SLOs {sum(meets(o) for o in rows) / max(len(rows), 1):4.0%}"
        )
    print(f"peak memory of the local cluster: {peak_rss / 2**30:.2f} GiB RSS")
    ok = sum(meets(o) for o in after)
    print(
        f"right after: {sum(o.status == 200 for o in after)}/10 served, {ok}/10 within SLO "
        f"(TTFT p50 {quantile([o.ttft_s for o in after if o.ttft_s is not None], 50):.2f} s)"
    )
