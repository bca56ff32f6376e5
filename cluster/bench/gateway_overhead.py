"""`make bench`: what the gateway and Ray Serve cost, measured side by side in one run.

Three servers answer the same 1-token chat request on this machine: a bare FastAPI app returning a
canned completion, our gateway app under uvicorn with the mock engine in-process (no Ray), and the
full path (Serve proxy -> gateway replica -> token-aware router -> engine replica). The mock runs
1,000x faster than an H100 so engine time is negligible and what remains is overhead. Then one
high-effort stream: tokens/s through the full path vs the mock engine consumed directly.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request

from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.config import ClusterConfig
from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.mock import MockEngine
from cluster.harmony import Harmony, Turn
from cluster.serve.local import free_port, local_cluster

MODEL = "gpt-oss-120b"
TIME_SCALE = 0.001
ONE_TOKEN = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hi."}],
    "reasoning_effort": "low",
    "max_tokens": 1,
}
STREAM_SEED = 3


def _bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict:
        body = await request.json()
        return {
            "id": "chatcmpl-bare",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }

    return app


@contextmanager
def _uvicorn(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def _latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n + 10):
            start = time.perf_counter()
            r = http.post("/v1/chat/completions", json=ONE_TOKEN)
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if i >= 10:  # warm-up
                out.append(elapsed)
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _stream_rate(url: str) -> tuple[int, float]:
    body = ONE_TOKEN | {
        "reasoning_effort": "high",
        "max_tokens": 30_000,
        "stream": True,
        "seed": STREAM_SEED,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - start


async def _engine_rate(config: ClusterConfig, harmony: Harmony) -> tuple[int, float]:
    engine = MockEngine(config, harmony)
    prompt = harmony.render([Turn("user", "Say hi.")], Effort.HIGH)
    sampling = SamplingParams(30_000, seed=STREAM_SEED, stop_token_ids=harmony.stop_token_ids)
    start = time.perf_counter()
    tokens = 0
    async for out in engine.generate(EngineRequest("bench", prompt, sampling, Effort.HIGH)):
        tokens += len(out.token_ids)
    elapsed = time.perf_counter() - start
    await engine.shutdown()
    return tokens, elapsed


def run(requests: int) -> None:
    config = ClusterConfig.model_validate(
        {"engine": {"mock": {"time_scale": TIME_SCALE}}, "gateway": {"port": free_port()}}
    )
    harmony = Harmony()
    print(
        f"gateway overhead: {requests} sequential 1-token chat requests per path, mock engine "
        f"at time scale {TIME_SCALE} (engine time ~0)"
    )
    with local_cluster(config) as cluster:
        rss = cluster.rss_bytes()
        rows = {}
        with _uvicorn(_bare_app()) as url:
            rows["bare FastAPI (canned reply)"] = _latencies(url, requests)
        gateway_app = create_app(config, harmony, InProcessEngine(MockEngine(config, harmony)))
        with _uvicorn(gateway_app) as url:
            rows["gateway app, in-process mock (no Ray)"] = _latencies(url, requests)
        rows["full path: Serve proxy -> gateway -> router -> engine"] = _latencies(
            cluster.url, requests
        )
        stream_tokens, stream_s = _stream_rate(cluster.url)
    engine_tokens, engine_s = asyncio.run(_engine_rate(config, harmony))

    bare_p50 = _p(rows["bare FastAPI (canned reply)"], 50)
    print(f"\n{'path':<56}{'p50 ms':>9}{'p99 ms':>9}{'p50 vs bare':>13}")
    for name, values in rows.items():
        p50, p99 = _p(values, 50), _p(values, 99)
        print(f"{name:<56}{p50:>9.2f}{p99:>9.2f}{p50 / bare_p50:>12.1f}x")
    through = stream_tokens / stream_s
    alone = engine_tokens / engine_s
    print(f"\none high-effort stream ({stream_tokens} tokens, seed {STREAM_SEED}):")
    print(f"  mock engine alone, in-process       {alone:>10,.0f} tokens/s")
    print(
        f"  through the full path (SSE client)  {through:>10,.0f} tokens/s  "
        f"({through / alone:.2f}x the engine alone)"
    )
    print(f"\nlocal cluster memory (driver + Ray processes): {rss / 2**30:.2f} GiB RSS")
