"""`/v1/completions`: a raw prompt (text or token ids) continued by the model, no harmony rendering.

As in vLLM, special tokens written in a text prompt are control tokens (this endpoint is for
callers who render harmony themselves) and are dropped from the returned text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from openai.types import Completion, CompletionChoice
from openai.types.completion_usage import CompletionUsage

from cluster.api.chunks import MARKER, ChunkTemplate
from cluster.api.errors import OpenAIError
from cluster.api.generation import Caller, Demand, Generation, Service, Stream
from cluster.api.logprobs import legacy_logprobs
from cluster.api.protocol import CompletionRequest
from cluster.api.sampling import check_model, engine_request, new_id, usage_options
from cluster.api.stops import StopMatcher
from cluster.contracts import TokenLogprob
from cluster.harmony import VOCAB_SIZE


class CompletionService(Service):
    endpoint = "completions"

    async def create(
        self, body: CompletionRequest, caller: Caller
    ) -> tuple[Completion | Stream, dict[str, str]]:
        check_model(self._config, body.model)
        if isinstance(body.prompt, str):
            prompt = self._harmony.encode_raw(body.prompt)
        else:
            prompt = list(body.prompt)
            if any(not 0 <= t < VOCAB_SIZE for t in prompt):
                raise OpenAIError(400, "prompt: token id out of range", param="prompt")
        request = engine_request(
            self._config,
            body,
            prompt,
            request_id=new_id("cmpl"),
            effort=self._config.default_effort,
            requested_max_tokens=body.max_tokens,
            max_tokens_param="max_tokens",
            stop_token_ids=(
                *self._harmony.stop_token_ids,
                self._harmony.special_id("<|endoftext|>"),
            ),
        )
        deadline = self._config.efforts[request.effort].deadline_s
        run = Generation(
            request=request,
            stop=StopMatcher(body.stop),
            demand=Demand(tenant=caller.tenant),
            endpoint="completions",
            caller=caller,
            deadline_s=deadline,
        )
        await run.start(self._engine)
        created = int(time.time())

        def completion(choices: list[CompletionChoice], with_usage: bool = False) -> Completion:
            usage = CompletionUsage(
                prompt_tokens=run.prompt_tokens,
                completion_tokens=run.completion_tokens,
                total_tokens=run.prompt_tokens + run.completion_tokens,
            )
            return Completion(
                id=request.request_id,
                object="text_completion",
                created=created,
                model=body.model,
                choices=choices,
                usage=usage if with_usage else None,
            )

        asked = body.logprobs is not None
        offset = 0  # characters of the completion so far, for text_offset

        def choice(text: str, finish: str | None, entries=()) -> CompletionChoice:
            nonlocal offset
            logprobs = legacy_logprobs(self._harmony, entries, offset) if asked else None
            offset += len(text)
            return CompletionChoice.model_construct(
                index=0, text=text, finish_reason=finish, logprobs=logprobs
            )

        if not body.stream:
            entries: list[tuple[int, TokenLogprob]] = []
            pieces: list[str] = []
            async with aclosing(self._texts(run)) as texts:
                async for piece, logprobs in texts:
                    pieces.append(piece)
                    entries += logprobs
            reply = completion(
                [choice("".join(pieces), run.finish_reason or "stop", entries)], with_usage=True
            )
            return reply, run.headers

        include_usage, continuous = usage_options(body)
        token_chunk = ChunkTemplate(completion([choice(MARKER, None)]), exclude_none=False)

        async def events() -> AsyncIterator[str]:
            async with aclosing(self._texts(run)) as texts:
                async for piece, logprobs in texts:
                    if continuous or asked:  # usage so far, or logprobs: no template
                        yield completion(
                            [choice(piece, None, logprobs)], continuous
                        ).model_dump_json()
                    else:
                        yield token_chunk(piece)
            final = completion([choice("", run.finish_reason or "stop")], continuous)
            yield final.model_dump_json(exclude_none=True)
            if include_usage:
                yield completion([], with_usage=True).model_dump_json(exclude_none=True)

        return Stream(events(), run.close), run.headers

    async def _texts(self, run: Generation) -> AsyncIterator[tuple[str, list]]:
        """Decoded text (special tokens dropped) with client stop strings applied, and the
        logprobs of the tokens it came from (when asked)."""
        decoder = self._harmony.text_stream()
        pending: list[tuple[int, TokenLogprob]] = []
        async with aclosing(run.token_batches()) as batches:
            async for output in batches:
                if output.logprobs is not None:
                    pending += zip(output.token_ids, output.logprobs, strict=True)
                if text := run.stop.feed(decoder.feed(output.token_ids)):
                    yield text, pending
                    pending = []
        if tail := run.stop.feed(decoder.flush()) + run.stop.flush():
            yield tail, pending
