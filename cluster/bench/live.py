"""What the live benchmarks share: a mock-engine cluster config, one streamed chat request timed
from the client's side of the wire, and an open-loop driver (`bench-live`, `bench-overload`).

An agentic workload's prompts are segments of content (`SimRequest.segments`); the driver writes
each as text of about its length, the same text wherever the same content recurs (a persona's
developer prompt, an earlier turn resent), so the engines' prefix caches see what the simulator's
do. A tool's result is sent as a user message: harmony renders it differently, the cache the same.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from cluster.config import ClusterConfig, deep_merge
from cluster.contracts import Effort
from cluster.serve.local import free_port
from cluster.sim.workload import SimRequest, WorkloadSpec, generate

MODEL = "gpt-oss-120b"
# Output priors 10x shorter than the reference mix, same 1 : 4.8 : 20 spread across efforts.
EFFORTS = {
    "low": {"output_tokens": {"median_tokens": 25}},
    "medium": {"output_tokens": {"median_tokens": 120}},
    "high": {"output_tokens": {"median_tokens": 500}},
}


# Common English words that o200k encodes as one token each (with their leading space).
_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part"
)
_WORDS = _TEXT.split()


@dataclass
class Reply:
    """One request as the client saw it: status, time to first token, mean inter-token gap, and
    its prompt's tokens, of them those the engine's prefix cache held."""

    effort: Effort
    status: int
    ttft_s: float | None = None
    mean_itl_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0


def segment_text(content: object, tokens: int) -> str:
    """About `tokens` tokens of text, the same for the same content."""
    rng = random.Random(repr(content))
    return "".join(" " + rng.choice(_WORDS) for _ in range(tokens))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def messages(request: SimRequest) -> list[dict[str, str]]:
    """The chat messages of a request: an agentic one's segments (the system message is the
    gateway's to render), else a user message of the request's prompt length."""
    if not request.segments:
        return user(" ".join(["word"] * request.prompt_tokens))
    roles = {"developer": "developer", "message": "user", "reply": "assistant"}
    return [
        {"role": roles[content[0]], "content": segment_text(content, tokens)}
        for content, tokens in request.segments
        if content[0] in roles  # the system message is the gateway's
    ]


def mock_config(policy: str, **mock: int) -> ClusterConfig:
    """Two mock replicas of eight seats under `policy`; `mock` overrides engine.mock settings."""
    data = deep_merge(
        ClusterConfig().to_args(),
        {
            "engine": {"mock": {"max_num_seqs": 8, "seed": 1} | mock},
            "engine_replicas": {"min_replicas": 2, "max_replicas": 2},
            "router": {"policy": policy},
            "gateway": {"port": free_port()},
            "efforts": EFFORTS,
        },
    )
    return ClusterConfig.model_validate(data)


async def chat_once(
    client: httpx.AsyncClient, effort: Effort, user: str, messages: list[dict[str, str]]
) -> Reply:
    body = {
        "model": MODEL,
        "messages": messages,
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
        usage: dict = {}
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
        end = time.perf_counter()
    tokens = usage.get("completion_tokens", 0)
    itl = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return Reply(effort, 200, first - start, itl, usage.get("prompt_tokens", 0), cached)


async def drive(url: str, workload: WorkloadSpec) -> list[Reply]:
    requests = generate(workload)
    limits = httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        tasks = []
        for r in requests:
            await asyncio.sleep(max(0.0, r.arrival - (time.perf_counter() - start)))
            tasks.append(asyncio.create_task(chat_once(client, r.effort, r.tenant, messages(r))))
        return await asyncio.gather(*tasks)


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@contextmanager
def beside(work: Callable[[threading.Event], None]) -> Iterator[None]:
    """`work(stop)` on a thread for as long as the block runs (a sampler, a fault injector);
    `stop` is set when the block ends, and the thread joined."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
