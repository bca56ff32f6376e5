"""What the live benchmarks share: a mock-engine cluster config, one streamed chat request timed
from the client's side of the wire, and an open-loop driver (`bench-live`, `bench-overload`)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

from cluster.config import ClusterConfig, deep_merge
from cluster.contracts import Effort
from cluster.serve.local import free_port
from cluster.sim.workload import WorkloadSpec, generate

MODEL = "gpt-oss-120b"
# Output priors 10x shorter than the reference mix, same 1 : 4.8 : 20 spread across efforts.
EFFORTS = {
    "low": {"output_tokens": {"median_tokens": 25}},
    "medium": {"output_tokens": {"median_tokens": 120}},
    "high": {"output_tokens": {"median_tokens": 500}},
}


@dataclass
class Reply:
    """One request as the client saw it: status, time to first token, mean inter-token gap."""

    effort: Effort
    status: int
    ttft_s: float | None = None
    mean_itl_s: float | None = None


def mock_config(policy: str) -> ClusterConfig:
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


async def chat_once(client: httpx.AsyncClient, effort: Effort, user: str, prompt: str) -> Reply:
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
            return Reply(effort, response.status_code)
        first = time.perf_counter()  # headers leave the gateway with the first engine output
        tokens = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        end = time.perf_counter()
    itl = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    return Reply(effort, 200, first - start, itl)


async def drive(url: str, workload: WorkloadSpec) -> list[Reply]:
    requests = generate(workload)
    limits = httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        tasks = []
        for r in requests:
            await asyncio.sleep(max(0.0, r.arrival - (time.perf_counter() - start)))
            prompt = " ".join(["word"] * r.prompt_tokens)
            tasks.append(asyncio.create_task(chat_once(client, r.effort, r.tenant, prompt)))
        return await asyncio.gather(*tasks)


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
