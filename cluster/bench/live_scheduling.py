"""`make bench-live`: the scheduler as hosted in Ray Serve, against Serve's push routing, live.

The simulator proves the policy; this proves the hosting: a local Ray cluster with two mock engine
replicas (eight seats each, H100 TP2 timing, outputs 10x shorter than the reference mix so two
cores can stream them) takes the same seeded open-loop overload twice: once with
`router.policy: least_outstanding_tokens` (every request pushed to Serve's router at once and
queued first come, first served inside the engine, as Ray Serve LLM and vLLM do) and once with
`effort_aware` (each gateway's scheduler admits, orders and places). Per effort class it prints
TTFT percentiles and SLO attainment, plus 429s and goodput, from the client's side of the wire.

Then the same two policies take agentic traffic (`Agentic`: a few personas' long developer
prompts shared by many conversations, each turn resending the ones before): the mock models
vLLM's prefix cache, and each policy's share of prompt tokens the caches held is printed beside
its TTFT, from the `usage.prompt_tokens_details.cached_tokens` the clients got.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from cluster.bench.live import EFFORTS, Reply, drive, mock_config, quantile
from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.serve.local import local_cluster
from cluster.sim.workload import Agentic, Lognormal, WorkloadSpec

# Agent traffic at the live outputs' scale: mostly low effort, long shared developer prompts.
AGENTIC = Agentic(personas=4, developer_tokens=Lognormal(median=4_000, sigma=0.3), lead_s=0)
AGENTIC_MIX = {Effort.LOW: 0.7, Effort.MEDIUM: 0.25, Effort.HIGH: 0.05}
# The mock's KV per replica for that run: an H100 TP2 holds 1.8M tokens against a fleet's
# thousands of conversations; two replicas' caches here face a handful, so they get less room
# and must choose what to keep, as a busy fleet's do.
AGENTIC_KV_TOKENS = 64_000


def _hit_rate(replies: list[Reply]) -> float:
    served = [o for o in replies if o.status == 200]
    return sum(o.cached_tokens for o in served) / max(sum(o.prompt_tokens for o in served), 1)


def _report(policy: str, outcomes: list[Reply], config: ClusterConfig, duration: float) -> None:
    by_effort: dict[Effort, list[Reply]] = defaultdict(list)
    for o in outcomes:
        by_effort[o.effort].append(o)
    shed = sum(o.status == 429 for o in outcomes)
    failed = sum(o.status not in (200, 429) for o in outcomes)

    def meets(o: Reply) -> bool:
        return o.status == 200 and config.efforts[o.effort].met(o.ttft_s, o.mean_itl_s)

    good = sum(meets(o) for o in outcomes)
    served = [o for o in outcomes if o.status == 200]
    print(
        f"\n{policy}: {len(outcomes)} requests, {shed} shed (429), {failed} failed, "
        f"SLO goodput {good / duration:.2f} req/s ({good} within both SLOs), "
        f"{len(served) / duration:.1f} served/s, prefix-cache hits {_hit_rate(outcomes):.0%} "
        "of prompt tokens"
    )
    for effort in Effort:
        rows = by_effort[effort]
        served = [o for o in rows if o.status == 200]
        ttfts = [o.ttft_s for o in served]
        itls = [o.mean_itl_s * 1000 for o in served]
        ttft_met = sum(o.ttft_s <= config.efforts[effort].ttft_slo_s for o in served)
        attained = sum(meets(o) for o in rows) / max(len(rows), 1)
        print(
            f"  {effort.value:<7} n={len(rows):<4} TTFT p50 {quantile(ttfts, 50):6.2f}s "
            f"p99 {quantile(ttfts, 99):6.2f}s (within SLO {ttft_met / max(len(served), 1):4.0%} "
            f"of served)  mean ITL p50 {quantile(itls, 50):5.1f} ms  "
            f"SLO attainment {attained:4.0%}  cache hits {_hit_rate(rows):4.0%}"
        )


def _compare(workload: WorkloadSpec, duration: float, **mock: int) -> None:
    for policy in ("least_outstanding_tokens", "effort_aware"):
        config = mock_config(policy, **mock)
        with local_cluster(config) as cluster:
            outcomes = asyncio.run(drive(cluster.url, workload))
        _report(policy, outcomes, config, duration)


def run(rate: float = 14.0, duration: float = 40.0, agentic_rate: float = 16.0) -> None:
    workload = WorkloadSpec(
        rate=rate, duration_s=duration, prompt_tokens=Lognormal(median=60, sigma=0.5), seed=7
    )
    print(
        f"live scheduling: {rate:g} req/s Poisson for {duration:g} s (effort mix 50/35/15, "
        "10 tenants), 2 mock engine replicas x 8 seats, through the Serve proxy"
    )
    _compare(workload, duration)
    if agentic_rate <= 0:
        return
    lengths = {e: Lognormal(median=p["output_tokens"]["median_tokens"]) for e, p in EFFORTS.items()}
    agentic = WorkloadSpec(
        rate=agentic_rate,
        duration_s=duration,
        agentic=AGENTIC,
        effort_mix=AGENTIC_MIX,
        output_tokens=lengths,
        seed=7,
    )
    print(
        f"\nlive agentic: {agentic_rate:g} turns/s for {duration:g} s ({AGENTIC.personas} "
        f"personas, developer prompts ~{AGENTIC.developer_tokens.median:g} tokens, "
        f"~{AGENTIC.mean_turns:g} turns per conversation, effort mix 70/25/5), "
        f"{AGENTIC_KV_TOKENS:,} KV tokens per replica"
    )
    _compare(agentic, duration, kv_capacity_tokens=AGENTIC_KV_TOKENS)
