"""The CPU mock engine: a `BatchingModel` run against the wall clock, speaking real harmony tokens.

One asyncio task steps the model. Steps are cheap to compute, so the loop runs them ahead until the
modelled clock (scaled by `time_scale`) passes the wall clock, then sleeps; tokens a stream
produced meanwhile are handed over together, as one Ray message instead of one per token. Like
vLLM's `stream_interval`, a stream is woken for its first token, then every `stream_interval`
tokens, and at its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cluster.blocks import token_blocks
from cluster.config import ClusterConfig
from cluster.contracts import EngineOutput, EngineRequest, LoadReport
from cluster.engine.base import Engine
from cluster.engine.batching import BatchingModel
from cluster.engine.mock_replies import ReplyWriter
from cluster.harmony import Harmony

_MIN_SLEEP_S = 0.002
_MAX_STEPS_AHEAD = 64  # yield to the streams at least this often when the loop runs behind


@dataclass
class _Stream:
    script: list[int]
    produced: int = 0
    sent: int = 0
    done: bool = False
    ended_at: float | None = None  # wall time the model freed its seat
    cached: int = 0  # prompt tokens the prefix cache held on admission
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class MockEngine(Engine):
    def __init__(self, config: ClusterConfig, harmony: Harmony | None = None) -> None:
        mock = config.engine.mock
        self._harmony = harmony or Harmony(
            config.harmony.vocab_dir, config.harmony.conversation_start_date
        )
        self._time_scale = mock.time_scale
        self._model = BatchingModel(
            perf=mock.perf,
            tensor_parallel_size=config.engine.parallelism.tensor_parallel_size,
            max_num_seqs=mock.max_num_seqs,
            max_num_batched_tokens=mock.max_num_batched_tokens,
            kv_capacity_tokens=mock.kv_capacity_tokens,
        )
        self._interval = config.engine.stream_interval
        self._writer = ReplyWriter(self._harmony, config.efforts, mock.final_share, mock.seed)
        self._streams: dict[str, _Stream] = {}
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.request_id in self._streams:
            raise ValueError(f"duplicate request id {request.request_id}")
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="mock-engine-loop")
        # A resumed reply is the one its prompt began, from where it stopped: the script is
        # written from the prompt before it, seeded the same, and its first tokens skipped.
        resumed = request.resumed_tokens
        prompt = request.prompt_token_ids[: len(request.prompt_token_ids) - resumed]
        s = request.sampling
        script = self._writer.write(prompt, s.seed, request.request_id, request.constraint)
        stops = set(s.stop_token_ids)
        cut = next((i + 1 for i, t in enumerate(script) if t in stops), len(script))
        finish = "stop" if cut <= resumed + s.max_tokens else "length"
        script = script[: min(cut, resumed + s.max_tokens)]
        logprobs = None
        if s.logprobs is not None:
            logprobs = self._writer.logprobs(script, s.logprobs, s.seed, request.request_id)
            logprobs = logprobs[resumed:]
        script = script[resumed:]
        stream = _Stream(script)
        received_at = time.time()
        self._streams[request.request_id] = stream
        self._model.add(
            request.request_id,
            len(request.prompt_token_ids),
            len(script),
            request.expected_output_tokens,
            token_blocks(request.prompt_token_ids, self._model.block_size),
        )
        self._work.set()
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                # Read once: the engine loop may finish the stream while this waits at `yield`
                # for a slow reader, and the last tokens and the finish reason must still go.
                sent, produced, done = stream.sent, stream.produced, stream.done
                if produced > sent or done:
                    first = received_at if sent == 0 else None
                    cached = stream.cached if sent == 0 else None
                    stream.sent = produced
                    lps = logprobs[sent:produced] if logprobs is not None else None
                    if done:
                        yield EngineOutput(
                            script[sent:produced], finish, first, stream.ended_at, lps, cached
                        )
                    else:
                        yield EngineOutput(
                            script[sent:produced],
                            received_at=first,
                            logprobs=lps,
                            cached_tokens=cached,
                        )
                if done:
                    return
        finally:
            if not stream.done:
                self._model.abort(request.request_id)
            del self._streams[request.request_id]

    def cached_prompt_tokens(self, prompt_token_ids: list[int]) -> int:
        blocks = token_blocks(prompt_token_ids, self._model.block_size)
        return self._model.cached_tokens(len(prompt_token_ids), blocks)

    def load_report(self) -> LoadReport:
        return LoadReport(
            running=self._model.running,
            waiting=self._model.waiting,
            kv_used_tokens=self._model.kv_used_tokens,
            kv_capacity_tokens=self._model.kv_capacity_tokens,
            outstanding_tokens=self._model.outstanding_tokens,
            max_num_seqs=self._model.max_num_seqs,
            reported_at=time.time(),
            prefill_tokens=self._model.prefill_tokens,
        )

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        anchor_wall, anchor_model = loop.time(), self._model.now
        steps_without_sleep = 0
        while True:
            if self._model.idle:
                self._work.clear()
                await self._work.wait()
                # Anchor modelled time to the wall clock when work arrives after idling.
                anchor_wall, anchor_model = loop.time(), self._model.now
            result = self._model.step()
            for request_id, cached in result.cached.items():
                if (stream := self._streams.get(request_id)) is not None:
                    stream.cached = cached
            for request_id, count in result.emitted.items():
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.produced += count
                    if stream.sent == 0 or stream.produced - stream.sent >= self._interval:
                        stream.wake.set()
            for request_id in result.finished:
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.done, stream.ended_at = True, time.time()
                    stream.wake.set()
            ahead = anchor_wall + (self._model.now - anchor_model) * self._time_scale - loop.time()
            steps_without_sleep += 1
            if ahead > _MIN_SLEEP_S or steps_without_sleep >= _MAX_STEPS_AHEAD:
                await asyncio.sleep(max(ahead, 0))
                steps_without_sleep = 0
