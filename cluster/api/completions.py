"""`/v1/completions`: a raw prompt (text or token ids) continued by the model, no harmony rendering.

As in vLLM, special tokens written in a text prompt are control tokens (this endpoint is for
callers who render harmony themselves) and are dropped from the returned text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import partial

from openai.types import Completion, CompletionChoice
from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

from cluster.api.choices import close_all, merge, nth_choice, start_all
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
        first = engine_request(
            self._config,
            body,
            prompt,
            request_id=new_id("cmpl"),
            effort=self._config.default_effort,
            requested_max_tokens=body.max_tokens,
            max_tokens_param="max_tokens",
            stop_token_ids=self._harmony.raw_stop_token_ids,
        )
        deadline = self._config.efforts[first.effort].deadline_s
        runs = [
            Generation(
                request=nth_choice(first, i),
                stop=StopMatcher(body.stop),
                demand=Demand(tenant=caller.tenant),
                endpoint="completions",
                caller=caller,
                deadline_s=deadline,
                migration_limit=self._config.gateway.migration_limit,
            )
            for i in range(body.n)
        ]
        await start_all(runs, self._engine)
        created = int(time.time())

        def completion(choices: list[CompletionChoice], with_usage: bool = False) -> Completion:
            """The prompt counts once, every choice's output."""
            done = sum(r.completion_tokens for r in runs)
            prompt_tokens = runs[0].prompt_tokens
            usage = CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=done,
                total_tokens=prompt_tokens + done,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=runs[0].cached_tokens),
            )
            return Completion(
                id=first.request_id,
                object="text_completion",
                created=created,
                model=body.model,
                choices=choices,
                usage=usage if with_usage else None,
            )

        asked = body.logprobs is not None

        def chooser(index: int) -> Callable[..., CompletionChoice]:
            """Choice `index`'s pieces, each with the logprobs of its tokens (when asked)."""
            offset = 0  # characters of this choice's text so far, for text_offset

            def choice(text: str, finish: str | None, entries=()) -> CompletionChoice:
                nonlocal offset
                logprobs = legacy_logprobs(self._harmony, entries, offset) if asked else None
                offset += len(text)
                return CompletionChoice.model_construct(
                    index=index, text=text, finish_reason=finish, logprobs=logprobs
                )

            return choice

        if not body.stream:
            choices = await asyncio.gather(
                *(self._whole(run, chooser(i)) for i, run in enumerate(runs))
            )
            return completion(list(choices), with_usage=True), runs[0].headers

        include_usage, continuous = usage_options(body)

        async def chunks(run: Generation, index: int) -> AsyncIterator[str]:
            choice = chooser(index)
            prototype = CompletionChoice.model_construct(
                index=index, text=MARKER, finish_reason=None, logprobs=None
            )
            token_chunk = ChunkTemplate(completion([prototype]), exclude_none=False)
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

        async def events() -> AsyncIterator[str]:
            async with aclosing(merge([chunks(run, i) for i, run in enumerate(runs)])) as merged:
                async for chunk in merged:
                    yield chunk
            if include_usage:
                yield completion([], with_usage=True).model_dump_json(exclude_none=True)

        return Stream(events(), partial(close_all, runs)), runs[0].headers

    async def _whole(
        self, run: Generation, choice: Callable[..., CompletionChoice]
    ) -> CompletionChoice:
        """A choice's whole text, not streamed."""
        entries: list[tuple[int, TokenLogprob]] = []
        pieces: list[str] = []
        async with aclosing(self._texts(run)) as texts:
            async for piece, logprobs in texts:
                pieces.append(piece)
                entries += logprobs
        return choice("".join(pieces), run.finish_reason or "stop", entries)

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
