"""`make bench-live`: the scheduler as hosted in Ray Serve, against Serve's push routing, live.

The simulator proves the policy; this proves the hosting: a local Ray cluster with two mock engine
replicas (eight seats each, H100 TP2 timing, outputs 10x shorter than the reference mix so two
cores can stream them) takes the same seeded open-loop overload twice: once with
`router.policy: least_outstanding_tokens` (every request pushed to Serve's router at once and
queued first come, first served inside the engine, as Ray Serve LLM and vLLM do) and once with
`effort_aware` (each gateway's scheduler admits, orders and places). Per effort class it prints
TTFT percentiles and SLO attainment, plus 429s and goodput, from the client's side of the wire.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import httpx

from cluster.config import ClusterConfig, deep_merge
from cluster.contracts import Effort
from cluster.serve.local import free_port, local_cluster
from cluster.sim.workload import Lognormal, WorkloadSpec, generate

MODEL = "gpt-oss-120b"
# Output priors 10x shorter than the reference mix, same 1 : 4.8 : 20 spread across efforts.
EFFORTS = {
    "low": {"output_tokens": {"median_tokens": 25}},
    "medium": {"output_tokens": {"median_tokens": 120}},
    "high": {"output_tokens": {"median_tokens": 500}},
}


@dataclass
class Outcome:
    effort: Effort
    status: int
    ttft_s: float | None = None
    mean_itl_s: float | None = None


def _config(policy: str) -> ClusterConfig:
    data = deep_merge(
        ClusterConfig().to_args(),
        {
            "engine": {"mock": {"max_num_seqs": 8, "seed": 1}},
            "engine_replicas": {"min_replicas": 2, "max_replicas": 2},
            "router": {"policy": policy},
            "gateway": {"port": free_port()},
            "efforts": EFFORTS,
        },
    )
    return ClusterConfig.model_validate(data)


async def _one(client: httpx.AsyncClient, effort: Effort, user: str, prompt: str) -> Outcome:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "reasoning_effort": effort.value,
        "user": user,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Outcome(effort, response.status_code)
        first = time.perf_counter()  # headers leave the gateway with the first engine output
        tokens = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        end = time.perf_counter()
    itl = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    return Outcome(effort, 200, first - start, itl)


async def _drive(url: str, workload: WorkloadSpec) -> list[Outcome]:
    requests = generate(workload)
    limits = httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        tasks = []
        for r in requests:
            await asyncio.sleep(max(0.0, r.arrival - (time.perf_counter() - start)))
            prompt = " ".join(["word"] * r.prompt_tokens)
            tasks.append(asyncio.create_task(_one(client, r.effort, r.tenant, prompt)))
        return await asyncio.gather(*tasks)


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _report(policy: str, outcomes: list[Outcome], config: ClusterConfig, duration: float) -> None:
    by_effort: dict[Effort, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_effort[o.effort].append(o)
    shed = sum(o.status == 429 for o in outcomes)
    failed = sum(o.status not in (200, 429) for o in outcomes)

    def meets(o: Outcome) -> bool:
        return o.status == 200 and config.efforts[o.effort].met(o.ttft_s, o.mean_itl_s)

    good = sum(meets(o) for o in outcomes)
    served = [o for o in outcomes if o.status == 200]
    print(f"\n{policy}: {len(outcomes)} requests, {shed} shed (429), {failed} failed, "
          f"SLO goodput {good / duration:.2f} req/s ({good} within both SLOs), "
          f"{len(served) / duration:.1f} served/s")  # fmt: skip
    for effort in Effort:
        rows = by_effort[effort]
        served = [o for o in rows if o.status == 200]
        ttfts = [o.ttft_s for o in served]
        itls = [o.mean_itl_s * 1000 for o in served]
        ttft_met = sum(o.ttft_s <= config.efforts[effort].ttft_slo_s for o in served)
        attained = sum(meets(o) for o in rows) / max(len(rows), 1)
        print(f"  {effort.value:<7} n={len(rows):<4} TTFT p50 {_q(ttfts, 50):6.2f}s "
              f"p99 {_q(ttfts, 99):6.2f}s (within SLO {ttft_met / max(len(served), 1):4.0%} "
              f"of served)  mean ITL p50 {_q(itls, 50):5.1f} ms  "
              f"SLO attainment {attained:4.0%}")  # fmt: skip


def run(rate: float = 14.0, duration: float = 40.0) -> None:
    workload = WorkloadSpec(
        rate=rate, duration_s=duration, prompt_tokens=Lognormal(median=60, sigma=0.5), seed=7
    )
    print(f"live scheduling: {rate:g} req/s Poisson for {duration:g} s (effort mix 50/35/15, "
          "10 tenants), 2 mock engine replicas x 8 seats, through the Serve proxy")  # fmt: skip
    for policy in ("least_outstanding_tokens", "effort_aware"):
        config = _config(policy)
        with local_cluster(config) as cluster:
            outcomes = asyncio.run(_drive(cluster.url, workload))
        _report(policy, outcomes, config, duration)
