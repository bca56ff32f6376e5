"""`make bench-faults`: an engine replica killed every 30 s for 3 minutes under steady load.

A local Ray cluster (two mock engine replicas of eight seats, the `bench-live` outputs, the mock at
half H100 speed) serves 12 clients sending streamed chats back to back: first calm, then while a
thread kills one engine replica every 30 s (Serve starts a new one each time). Replies whose
replica dies move to the other (`gateway.migration_limit`), so the goal is no client-visible error:
no non-200 status, no error event, no stream that ends without a finish reason. Printed for both
phases: requests completed and completion tokens per second, client-visible errors, the moves the
gateway counted, and the goodput the kills cost (tokens per second, faulty over calm). While a
replica is down the cluster has half its seats and sheds with 429: the clients wait out the
Retry-After and try again, up to twice, as the openai SDK does by default, and a request counts as
an error only when its last try fails; the 429s retried are printed beside.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from functools import partial

import httpx

from cluster.bench.live import MODEL, beside, mock_config, user
from cluster.contracts import Effort
from cluster.serve.local import free_port, local_cluster

CLIENTS, PHASE_S, KILL_EVERY_S = 12, 180.0, 30.0
MAX_RETRIES = 2  # the openai SDK's default
MIX = [Effort.LOW] * 10 + [Effort.MEDIUM] * 7 + [Effort.HIGH] * 3


@dataclass
class Phase:
    completed: int = 0
    tokens: int = 0
    errors: int = 0
    kinds: tuple[str, ...] = ()
    retried: int = 0  # 429s waited out and tried again


async def _stream(
    client: httpx.AsyncClient, effort: Effort, seed: int
) -> tuple[str, int, float | None]:
    """One streamed chat: ('done' | what went wrong, completion tokens, a 429's Retry-After)."""
    body = {
        "model": MODEL,
        "messages": user("Why is the sky blue? " + "word " * 60),
        "reasoning_effort": effort.value,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                retry = response.headers.get("retry-after")
                return f"http {response.status_code}", 0, float(retry) if retry else None
            finish, tokens = None, 0
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return f"error event {chunk['error'].get('code')}", 0, None
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
                for choice in chunk.get("choices", ()):
                    finish = choice.get("finish_reason") or finish
            return ("done", tokens, None) if finish else ("no finish reason", 0, None)
    except httpx.HTTPError as err:
        return f"transport {type(err).__name__}", 0, None


async def _load(url: str, seconds: float) -> Phase:
    """`CLIENTS` clients back to back for `seconds`."""
    phase = Phase()
    kinds: list[str] = []
    limits = httpx.Limits(max_connections=CLIENTS * 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            n = i
            while time.perf_counter() < stop:
                for attempt in range(MAX_RETRIES + 1):
                    kind, tokens, retry_after = await _stream(client, MIX[n % len(MIX)], n)
                    if retry_after is None or attempt == MAX_RETRIES:
                        break
                    phase.retried += 1
                    await asyncio.sleep(retry_after)
                if kind == "done":
                    phase.completed += 1
                    phase.tokens += tokens
                else:
                    kinds.append(kind)
                n += CLIENTS

        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
    phase.errors, phase.kinds = len(kinds), tuple(sorted(set(kinds)))
    return phase


def _kill_every(seconds: float, killed: list[str], stop: threading.Event) -> None:
    import ray

    while not stop.wait(seconds):
        engines = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if "#engine#" in a["name"]]  # fmt: skip
        if engines:
            victim = engines[len(killed) % len(engines)]
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed.append(victim)


def _moves(metrics_url: str, settle_s: float = 60.0) -> float:
    """The gateways' count of moved requests, once Ray's export stops changing (it lags)."""
    last, deadline = -1.0, time.monotonic() + settle_s
    while time.monotonic() < deadline:
        text = httpx.get(metrics_url, timeout=10).text
        moves = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("ray_gpt_oss_migrations_total{"))  # fmt: skip
        if moves == last and moves > 0:
            return moves
        last = moves
        time.sleep(5.0)
    return last


def run(phase_s: float = PHASE_S, kill_every_s: float = KILL_EVERY_S) -> None:
    config = mock_config("effort_aware", time_scale=2)
    with local_cluster(config, metrics_port=free_port()) as cluster:
        calm = asyncio.run(_load(cluster.url, phase_s))
        killed: list[str] = []
        with beside(partial(_kill_every, kill_every_s, killed)):
            faulty = asyncio.run(_load(cluster.url, phase_s))
        moves = _moves(cluster.metrics_url) if cluster.metrics_url else float("nan")
    print(
        f"faults: {CLIENTS} clients back to back, {phase_s:g} s calm, then {phase_s:g} s with an "
        f"engine replica killed every {kill_every_s:g} s ({len(killed)} kills); mock at half "
        "H100 speed, two replicas of eight seats"
    )
    for name, phase in (("calm", calm), ("faulty", faulty)):
        print(
            f"  {name:<6} completed {phase.completed:4} ({phase.completed / phase_s:.2f} req/s), "
            f"{phase.tokens / phase_s:7.1f} completion tokens/s, client-visible errors "
            f"{phase.errors} {list(phase.kinds)}, 429s retried {phase.retried}"
        )
    print(
        f"  moves counted by the gateways: {moves:.0f}; goodput under kills "
        f"{faulty.tokens / max(calm.tokens, 1):.2f}x calm (tokens/s)"
    )
