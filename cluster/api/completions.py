"""`/v1/completions`: a raw prompt (text or token ids) continued by the model, no harmony rendering.

As in vLLM, special tokens written in a text prompt are control tokens (this endpoint is for
callers who render harmony themselves) and are dropped from the returned text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from openai.types import Completion, CompletionChoice
from openai.types.completion_usage import CompletionUsage

from cluster.api.errors import OpenAIError
from cluster.api.generation import (
    EngineClient,
    StopMatcher,
    check_model,
    engine_request,
    first_and_rest,
    new_id,
    resolve_max_tokens,
)
from cluster.api.protocol import CompletionRequest
from cluster.config import ClusterConfig
from cluster.harmony import Harmony

_VOCAB_SIZE = 201_088


class CompletionService:
    def __init__(self, config: ClusterConfig, harmony: Harmony, engine: EngineClient) -> None:
        self._config = config
        self._harmony = harmony
        self._engine = engine

    async def create(self, body: CompletionRequest) -> Completion | AsyncIterator[str]:
        check_model(self._config, body.model)
        if isinstance(body.prompt, str):
            prompt = self._harmony.encode_raw(body.prompt)
        else:
            prompt = list(body.prompt)
            if any(not 0 <= t < _VOCAB_SIZE for t in prompt):
                raise OpenAIError(400, "prompt: token id out of range", param="prompt")
        effort = self._config.default_effort
        max_tokens = resolve_max_tokens(
            self._config, effort, body.max_tokens, len(prompt), "max_tokens"
        )
        request = engine_request(
            self._config,
            prompt,
            effort,
            max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop_token_ids=(
                *self._harmony.stop_token_ids,
                self._harmony.special_id("<|endoftext|>"),
            ),
            request_id=new_id("cmpl"),
        )
        first, rest = await first_and_rest(self._engine.generate(request))
        stop = StopMatcher(body.stop)
        created = int(time.time())
        state = {"tokens": 0, "finish": None}

        async def pieces() -> AsyncIterator[str]:
            output = first
            try:
                while output is not None:
                    state["tokens"] += len(output.token_ids)
                    state["finish"] = output.finish_reason or state["finish"]
                    if text := stop.feed(self._harmony.decode_text(output.token_ids)):
                        yield text
                    if stop.stopped:
                        state["finish"] = "stop"
                        return
                    if output.finish_reason is not None:
                        break
                    output = await anext(rest, None)
                if tail := stop.flush():
                    yield tail
            finally:
                await rest.aclose()

        def usage() -> CompletionUsage:
            return CompletionUsage(
                prompt_tokens=len(prompt),
                completion_tokens=state["tokens"],
                total_tokens=len(prompt) + state["tokens"],
            )

        def completion(
            choices: list[CompletionChoice], usage: CompletionUsage | None
        ) -> Completion:
            return Completion(
                id=request.request_id,
                object="text_completion",
                created=created,
                model=body.model,
                choices=choices,
                usage=usage,
            )

        def choice(text: str, finish: str | None) -> CompletionChoice:
            return CompletionChoice.model_construct(index=0, text=text, finish_reason=finish)

        if not body.stream:
            text = "".join([p async for p in pieces()])
            return completion([choice(text, state["finish"] or "stop")], usage())

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            async for piece in pieces():
                yield completion([choice(piece, None)], None).model_dump_json()
            final = completion([choice("", state["finish"] or "stop")], None)
            yield final.model_dump_json(exclude_none=True)
            if include_usage:
                yield completion([], usage()).model_dump_json(exclude_none=True)

        return events()
