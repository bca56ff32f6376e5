"""An engine replica holding a vLLM `AsyncLLM` (V1), fed harmony token ids by the gateway.

The gateway tokenizes and parses: token ids in, token ids out, no detokenizer on the engine's hot
path. vLLM loads the weights' tokenizer all the same, because structured outputs (xgrammar)
compile their grammar against its vocabulary: a request's `OutputConstraint` becomes a structural
tag bound to harmony's channels (`structural_tag.py`). Load reports come from vLLM's own scheduler stats
(a stat logger), and vLLM's metrics are exported through Ray under their own names
(`RayPrometheusStatLogger`, as Ray Serve LLM does). vLLM is imported lazily: the mock-only install
does not carry it.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from cluster.contracts import CacheDelta, EngineOutput, EngineRequest, LoadReport
from cluster.engine.base import Engine
from cluster.engine.kv_events import CacheRelay
from cluster.engine.parallelism import vllm_engine_args
from cluster.engine.structural_tag import structural_tag_json

logger = logging.getLogger(__name__)


def _scheduler_stats_logger(sink: dict[str, float]):
    """A vLLM stat logger class that copies each step's scheduler stats into `sink`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerStatsSink(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self._cache = vllm_config.cache_config

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is None:
                return
            blocks = self._cache.num_gpu_blocks or 0
            sink["running"] = scheduler_stats.num_running_reqs
            sink["waiting"] = scheduler_stats.num_waiting_reqs
            sink["kv_used_tokens"] = (
                scheduler_stats.kv_cache_usage * blocks * self._cache.block_size
            )

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerStatsSink


class VLLMEngine(Engine):
    def __init__(self, config: ClusterConfig) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        path = Path(config.model.path or "")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path {str(path)!r} holds no model on this node (no config.json): mount "
                "the weights there (PVC or host path); nothing is downloaded"
            )
        self._stats: dict[str, float] = {}
        self._inflight: dict[str, tuple[int, int]] = {}  # id -> (prompt, expected output) left
        engine_args = vllm_engine_args(config)
        self._events_path: Path | None = None
        if config.engine.kv_cache_events:
            # A socket file of this replica's own: nothing listens on the network.
            self._events_path = Path(tempfile.gettempdir()) / f"gpt-oss-kv-{uuid.uuid4().hex}"
            events_endpoint = f"ipc://{self._events_path}"
            engine_args["kv_events_config"] = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": events_endpoint,
            }
        args = AsyncEngineArgs(**engine_args)
        logger.info("starting vLLM AsyncLLM: %s", args)
        self._llm = AsyncLLM.from_engine_args(
            args,
            stat_loggers=[_scheduler_stats_logger(self._stats), RayPrometheusStatLogger],
        )
        self._relay = None if self._events_path is None else CacheRelay(events_endpoint)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        s = request.sampling
        structured = (
            None
            if request.constraint is None
            else StructuredOutputsParams(structural_tag=structural_tag_json(request.constraint))
        )
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            stop_token_ids=list(s.stop_token_ids),
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            skip_special_tokens=False,
            structured_outputs=structured,
            logprobs=s.logprobs,
        )
        prompt = {"prompt_token_ids": request.prompt_token_ids}
        prompt_ids = request.prompt_token_ids
        cached = 0 if self._relay is None else self._relay.cached_tokens(prompt_ids)
        self._inflight[request.request_id] = (
            len(prompt_ids) - cached,  # to prefill: the cache's part of the prompt is not
            request.expected_output_tokens,
        )
        finished = False
        generated = 0
        received_at: float | None = time.time()  # these two on the first output only
        cached_tokens: int | None = None
        try:
            async for out in self._llm.generate(
                prompt, params, request.request_id, priority=request.priority
            ):
                completion = out.outputs[0]
                generated += len(completion.token_ids)
                self._inflight[request.request_id] = (
                    0,
                    max(request.expected_output_tokens - generated, 1),
                )
                finished = out.finished
                if received_at is not None:  # the first output: what the prefix cache held
                    cached_tokens = out.num_cached_tokens or 0
                tokens = list(completion.token_ids)
                logprobs = _logprobs(tokens, completion.logprobs, s.logprobs)
                if finished:  # the engine core has freed its seat by now
                    reason = _finish_reason(completion.finish_reason)
                    yield EngineOutput(
                        tokens, reason, received_at, time.time(), logprobs, cached_tokens
                    )
                else:
                    yield EngineOutput(
                        tokens,
                        received_at=received_at,
                        logprobs=logprobs,
                        cached_tokens=cached_tokens,
                    )
                received_at = cached_tokens = None
        finally:
            self._inflight.pop(request.request_id, None)
            if not finished:
                await self._llm.abort(request.request_id)

    def load_report(self) -> LoadReport:
        # Scheduler stats arrive with engine steps; once vLLM's front end holds no unfinished
        # request the engine is idle and takes no more steps, so the last stats are stale.
        idle = self._llm.output_processor.get_num_unfinished_requests() == 0
        stats = {} if idle else self._stats
        cache = self._llm.vllm_config.cache_config  # blocks known once the engine started
        return LoadReport(
            running=int(stats.get("running", 0)),
            waiting=int(stats.get("waiting", 0)),
            kv_used_tokens=int(stats.get("kv_used_tokens", 0)),
            kv_capacity_tokens=(cache.num_gpu_blocks or 0) * cache.block_size,
            outstanding_tokens=sum(p + o for p, o in self._inflight.values()),
            max_num_seqs=self._llm.vllm_config.scheduler_config.max_num_seqs,
            reported_at=time.time(),
            # Prompts not answered yet, less what the prefix cache held of each on arrival (as
            # its KV events said; the whole prompt where the replica does not relay them).
            prefill_tokens=sum(p for p, _ in self._inflight.values()),
            cache_events=self._relay is not None,
        )

    def cache_events(self) -> AsyncIterator[CacheDelta] | None:
        return None if self._relay is None else self._relay.subscribe()

    async def shutdown(self) -> None:
        self._llm.shutdown()
        if self._relay is not None:
            self._relay.close()
        if self._events_path is not None:
            self._events_path.unlink(missing_ok=True)


def _logprobs(tokens: list[int], per_token: Any, top: int | None) -> tuple | None:
    """vLLM's per-token {token id: Logprob} (the sampled token and the top `top` by rank) as
    `TokenLogprob`s."""
    if top is None or per_token is None:
        return None
    out = []
    for token, ranked in zip(tokens, per_token, strict=True):
        best = sorted((lp.rank, t, lp.logprob) for t, lp in ranked.items() if lp.rank is not None)
        out.append((ranked[token].logprob, tuple((t, lp) for _, t, lp in best[:top])))
    return tuple(out)


def _finish_reason(reason: Any) -> str:
    return "length" if reason == "length" else "stop" if reason == "stop" else "abort"
