"""`make bench-gateway`: how many concurrent streams one gateway replica carries.

The mock engine runs at H100 pacing (time scale 1, TP2 timing) with seats for every stream, so
the engine is never the limit; one gateway replica sits in front of it. At each level (64 -> 1,024
concurrent streams, closed loop: a finished stream is replaced at once) the client counts streamed
tokens per second and the gap between consecutive chunks of a stream, and the same mock engine is
consumed in-process at the same concurrency for its own gaps. The figures: tokens/s through the
gateway, the p99 gap the path adds over the engine's own, and each process's CPU per 1,000 tokens
(the client's own share is printed too: on a small machine it competes for the same cores).

The client is a few lines of asyncio over raw sockets so that it costs less than the gateway it
measures; it reads SSE lines and the final usage chunk, nothing else. A stream that straddles the
window edge is credited with the share of its tokens whose chunks arrived inside the window (its
usage count times the fraction of its chunks seen inside), so long streams count at every level.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import psutil

from cluster.bench.processes import CpuUse, idle_cpu, measure_cpu
from cluster.config import ClusterConfig, deep_merge
from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.mock import MockEngine
from cluster.harmony import Harmony, Turn
from cluster.serve.local import free_port, local_cluster

MODEL = "gpt-oss-120b"
LEVELS = (64, 128, 256, 512, 1024)
INTERVALS = (1, 8)  # vLLM's default, and the GPU presets' `engine.stream_interval`
WINDOW_S = 12.0  # measured per level, after every stream has started
PROMPT = "Explain briefly why the sky is blue."
MAX_TOKENS = 200  # short replies, so each level sees many streams start and end


@dataclass
class Level:
    streams: int
    tokens_per_s: float
    gap_p50_ms: float
    gap_p99_ms: float
    engine_gap_p99_ms: float
    cpu_ms_per_1k: dict[str, float]
    client_ms_per_1k: float


@dataclass
class _Window:
    """What the client saw inside the measured window."""

    start: float
    end: float
    tokens: float = 0.0
    gaps: list[float] = field(default_factory=list)

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end


def _config(port: int, stream_interval: int) -> ClusterConfig:
    data = deep_merge(
        ClusterConfig().to_args(),
        {
            "engine": {
                "mock": {"time_scale": 1.0, "max_num_seqs": 2048, "kv_capacity_tokens": 10**8},
                "stream_interval": stream_interval,
            },
            "engine_replicas": {"min_replicas": 1, "max_replicas": 1},
            # The HAProxy ingress, as the GPU presets run it (its stats listener binds every
            # interface).
            "gateway": {
                "port": port,
                "ingress": "haproxy",
                "replicas": {"min_replicas": 1, "max_replicas": 1},
            },
            "router": {"admission_slack": 1000.0},
        },
    )
    return ClusterConfig.model_validate(data)


def _request_bytes(port: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "reasoning_effort": Effort.MEDIUM.value,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one_stream(port: int, request: bytes, window: _Window) -> None:
    """One streamed chat over a fresh connection: chunk arrival gaps and its tokens in the window."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        last = None
        chunks = inside = 0
        while line := await reader.readline():
            if not line.startswith(b"data: {"):
                continue
            if b'"usage":{' in line:
                if chunks:
                    usage = json.loads(line[6:])["usage"]["completion_tokens"]
                    window.tokens += usage * inside / chunks
                continue
            now = time.perf_counter()
            chunks += 1
            if window.inside(now):
                inside += 1
                if last is not None:
                    window.gaps.append(now - last)
            last = now
    finally:
        writer.close()


def _ramp_s(streams: int) -> float:
    """Starts spread over this long: streams that start together also prefill and end together."""
    return 3.0 + streams / 200


async def _drive(port: int, streams: int) -> tuple[_Window, CpuUse, float]:
    request = _request_bytes(port)
    ramp_s = _ramp_s(streams)
    start = time.perf_counter()
    window = _Window(start + ramp_s, start + ramp_s + WINDOW_S)
    me = psutil.Process()

    async def worker(k: int) -> None:
        await asyncio.sleep(ramp_s * k / streams)  # spread the starts over the ramp
        while time.perf_counter() < window.end:
            await _one_stream(port, request, window)

    tasks = [asyncio.create_task(worker(k)) for k in range(streams)]
    await asyncio.sleep(window.start - time.perf_counter())
    client_before = sum(me.cpu_times()[:2])
    with measure_cpu() as cpu:
        await asyncio.sleep(window.end - time.perf_counter())
    client_s = sum(me.cpu_times()[:2]) - client_before
    await asyncio.gather(*tasks)
    return window, cpu, client_s


async def _engine_gaps(config: ClusterConfig, streams: int) -> list[float]:
    """Gaps between a stream's outputs with the mock engine consumed directly (no gateway), the
    streams started over the same ramp as through the gateway."""
    harmony = Harmony()
    engine = MockEngine(config, harmony)
    prompt = harmony.render([Turn("user", PROMPT)], Effort.MEDIUM)
    gaps: list[float] = []
    ramp_s = _ramp_s(streams)
    end = time.perf_counter() + ramp_s + WINDOW_S / 2

    async def consume(k: int) -> None:
        await asyncio.sleep(ramp_s * k / streams)
        n = 0
        while time.perf_counter() < end:
            sampling = SamplingParams(MAX_TOKENS, stop_token_ids=harmony.stop_token_ids)
            request = EngineRequest(f"s{k}-{n}", prompt, sampling, Effort.MEDIUM)
            last = None
            async for _ in engine.generate(request):
                now = time.perf_counter()
                if last is not None and now > end - WINDOW_S / 2:
                    gaps.append(now - last)
                last = now
            n += 1

    await asyncio.gather(*(consume(k) for k in range(streams)))
    await engine.shutdown()
    return gaps


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(levels: tuple[int, ...] = LEVELS, stream_interval: int = 1) -> list[Level]:
    port = free_port()
    config = _config(port, stream_interval)
    print(
        f"gateway capacity: one gateway replica, mock engine at H100 pacing, closed-loop "
        f"medium-effort chat streams, stream interval {stream_interval}, {WINDOW_S:g} s measured "
        f"per level"
    )
    results = []
    with local_cluster(config):
        idle = idle_cpu(5.0)
        for streams in levels:
            window, cpu, client_s = asyncio.run(_drive(port, streams))
            engine_gaps = asyncio.run(_engine_gaps(config, streams))
            tokens = max(window.tokens, 1.0)
            results.append(
                Level(
                    streams=streams,
                    tokens_per_s=window.tokens / WINDOW_S,
                    gap_p50_ms=_q(window.gaps, 50) * 1000,
                    gap_p99_ms=_q(window.gaps, 99) * 1000,
                    engine_gap_p99_ms=_q(engine_gaps, 99) * 1000,
                    cpu_ms_per_1k=cpu.per_1k(tokens, idle),
                    client_ms_per_1k=client_s * 1e6 / tokens,
                )
            )
            _print(results[-1], os.cpu_count() or 1)
    return results


def _print(r: Level, cores: int) -> None:
    gateway = r.cpu_ms_per_1k.get("gateway", 0.0)
    capacity = 1e6 / gateway if gateway else float("nan")
    roles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.cpu_ms_per_1k.items()))
    print(
        f"{r.streams:>6} streams  {r.tokens_per_s:>8,.0f} tok/s  chunk gap p50 "
        f"{r.gap_p50_ms:6.1f} ms p99 {r.gap_p99_ms:7.1f} ms (engine alone p99 "
        f"{r.engine_gap_p99_ms:6.1f} ms, added {r.gap_p99_ms - r.engine_gap_p99_ms:+7.1f} ms)\n"
        f"{'':>16}CPU ms per 1k tokens above idle: {roles}; client {r.client_ms_per_1k:.0f}\n"
        f"{'':>16}one gateway core carries ~{capacity:,.0f} tok/s ({cores} cores here)"
    )
