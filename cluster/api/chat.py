"""`/v1/chat/completions`: OpenAI messages -> harmony tokens -> engine -> channels -> OpenAI replies.

Field names follow vLLM so existing clients work unchanged: the analysis channel is `reasoning`
(`delta.reasoning` when streaming), the final channel is `content`, commentary addressed to a
function is `tool_calls`, and `usage.completion_tokens_details.reasoning_tokens` counts analysis.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial

from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
)
from openai.types.chat import chat_completion as cc
from openai.types.chat import chat_completion_chunk as ck
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)

from cluster.api.choices import close_all, merge, nth_choice, start_all
from cluster.api.chunks import MARKER, ChunkTemplate
from cluster.api.errors import OpenAIError
from cluster.api.generation import Caller, Demand, Generation, Service, Stream
from cluster.api.logprobs import token_logprobs
from cluster.api.output_format import ReplyFormat
from cluster.api.protocol import ChatCompletionRequest, ChatMessage
from cluster.api.sampling import check_model, usage_options
from cluster.api.stops import StopMatcher
from cluster.contracts import Effort, EngineRequest, TokenLogprob
from cluster.harmony import ChannelDelta, ChannelParser, ToolCall, ToolSpec, Turn


def prefix_key(effort: Effort, instructions: str | None, tools: list[ToolSpec]) -> str:
    """Names the harmony prefix requests share (system message with the effort, then developer
    instructions and tools), so the scheduler can send them where that prefix is cached."""
    spec = repr(
        (effort.value, instructions, [(t.name, t.description, t.parameters) for t in tools])
    )
    return hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()


def to_turns(messages: list[ChatMessage]) -> tuple[str | None, list[Turn]]:
    """System and developer messages become harmony developer instructions; the rest, turns."""
    instructions: list[str] = []
    turns: list[Turn] = []
    tool_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            instructions.append(m.text or "")
        elif m.role == "user":
            turns.append(Turn("user", m.text))
        elif m.role == "assistant":
            calls = tuple(
                ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()
            )
            tool_names.update((c.id, c.name) for c in calls)
            turns.append(Turn("assistant", m.text, m.reasoning or m.reasoning_content, calls))
        else:
            name = tool_names.get(m.tool_call_id or "")
            if name is None:
                raise OpenAIError(
                    400,
                    f"messages.{i}.tool_call_id `{m.tool_call_id}` answers no earlier tool call",
                    param=f"messages.{i}.tool_call_id",
                )
            turns.append(Turn("tool", m.text, tool_name=name))
    return ("\n\n".join(instructions) or None), turns


@dataclass(kw_only=True)
class ChatGeneration(Generation):
    """A chat generation: the engine stream seen through the harmony channel parser."""

    parser: ChannelParser

    @property
    def reasoning_tokens(self) -> int:
        return self.parser.reasoning_tokens

    def openai_finish_reason(self) -> str:
        if self.parser.tool_calls and self.finish_reason == "stop":
            return "tool_calls"
        return self.finish_reason or "stop"

    async def deltas(self) -> AsyncIterator[ChannelDelta]:
        """Channel deltas with client stop strings applied to the answer."""
        async with aclosing(self.token_batches()) as batches:
            async for output in batches:
                for delta in self.parser.feed(output.token_ids, output.logprobs):
                    if delta.kind == "content":
                        delta.text = self.stop.feed(delta.text)
                        if delta.text:
                            self.answer_started()
                    if delta.text or delta.new_tool_call:
                        yield delta
                    if self.stop.stopped:
                        break
        if tail := self.stop.flush():
            yield ChannelDelta("content", tail)


def usage(runs: Sequence[ChatGeneration]) -> CompletionUsage:
    """Usage of a request's choices as OpenAI counts it: the prompt once, every choice's output."""
    prompt = runs[0].prompt_tokens
    completion = sum(r.completion_tokens for r in runs)
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(r.parser.reasoning_tokens for r in runs)
        ),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=runs[0].cached_tokens),
    )


class ChatService(Service):
    endpoint = "chat"

    def _check_size(self, body: ChatCompletionRequest) -> None:
        limits = self._config.gateway
        if len(body.messages) > limits.max_messages:
            raise OpenAIError(
                400,
                f"messages: {len(body.messages)} messages, above the limit of "
                f"{limits.max_messages}",
                param="messages",
            )
        tools = body.tools or []
        if len(tools) > limits.max_tools:
            raise OpenAIError(
                400,
                f"tools: {len(tools)} tools, above the limit of {limits.max_tools}",
                param="tools",
            )
        size = sum(len(t.model_dump_json()) for t in tools)
        if size > limits.max_tool_schema_bytes:
            raise OpenAIError(
                400,
                f"tools: the definitions take {size} bytes, above the limit "
                f"of {limits.max_tool_schema_bytes}",
                param="tools",
            )

    def _prepare(self, body: ChatCompletionRequest, caller: Caller) -> list[ChatGeneration]:
        """One generation per choice (`n`): each is admitted, placed and charged as a request."""
        check_model(self._config, body.model)
        self._check_size(body)
        effort = body.reasoning_effort or self._config.default_effort
        instructions, turns = to_turns(body.messages)
        tools = [
            ToolSpec(t.function.name, t.function.description, t.function.parameters)
            for t in (body.tools or ())
            if body.tool_choice != "none"
        ]
        requested = body.max_completion_tokens or body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        reply = ReplyFormat.of(
            body.response_format,
            "response_format.json_schema.schema",
            body.tool_choice,
            tools,
            body.thinking_token_budget,
        )

        instructions = reply.instructions(instructions)  # the schema, as the model reads it
        render = self.renderer(
            body,
            turns,
            instructions,
            tools,
            id_prefix="chatcmpl",
            requested_max_tokens=requested,
            max_tokens_param=param,
            reply=reply,
        )

        key = prefix_key(effort, instructions, tools)

        def choice(index: int) -> ChatGeneration:
            def variant(effort: Effort, degraded: bool = False) -> EngineRequest:
                return nth_choice(render(effort, degraded), index)

            demand = Demand(caller.tenant, key, bool(tools), partial(variant, degraded=True))
            return ChatGeneration(
                request=variant(effort),
                stop=StopMatcher(body.stop),
                demand=demand,
                endpoint="chat",
                caller=caller,
                deadline_s=self._config.efforts[effort].deadline_s,
                migration_limit=self._config.gateway.migration_limit,
                parser=self._harmony.parser(),
            )

        return [choice(i) for i in range(body.n)]

    async def create(
        self, body: ChatCompletionRequest, caller: Caller
    ) -> tuple[ChatCompletion | Stream, dict[str, str]]:
        runs = self._prepare(body, caller)
        await start_all(runs, self._engine)
        headers = runs[0].headers
        if body.stream:
            stream = self._stream(runs, body.model, *usage_options(body))

            return Stream(stream, partial(close_all, runs)), headers
        return await self._complete(runs, body.model), headers

    async def _complete(self, runs: list[ChatGeneration], model: str) -> ChatCompletion:
        choices = await asyncio.gather(*(self._choice(run, i) for i, run in enumerate(runs)))
        return ChatCompletion(
            id=runs[0].request.request_id,
            object="chat.completion",
            created=int(time.time()),
            model=model,
            choices=list(choices),
            usage=usage(runs),
        )

    async def _choice(self, run: ChatGeneration, index: int) -> cc.Choice:
        content: list[str] = []
        reasoning: list[str] = []
        logprobs: list[tuple[int, TokenLogprob]] = []
        async with aclosing(run.deltas()) as deltas:
            async for delta in deltas:
                if delta.kind == "content":
                    content.append(delta.text)
                    logprobs += delta.logprobs or ()
                elif delta.kind == "reasoning":
                    reasoning.append(delta.text)
        tool_calls = [
            ChatCompletionMessageFunctionToolCall(
                id=c.id, type="function", function=Function(name=c.name, arguments=c.arguments)
            )
            for c in run.parser.tool_calls
        ]
        message = ChatCompletionMessage(
            role="assistant",
            content="".join(content) or None,
            reasoning="".join(reasoning) or None,
            tool_calls=tool_calls or None,
        )
        asked = run.request.sampling.logprobs is not None
        return cc.Choice(
            index=index,
            message=message,
            finish_reason=run.openai_finish_reason(),
            logprobs=cc.ChoiceLogprobs(content=token_logprobs(self._harmony, logprobs))
            if asked
            else None,
        )

    async def _stream(
        self, runs: list[ChatGeneration], model_name: str, include_usage: bool, continuous: bool
    ) -> AsyncIterator[str]:
        """Every choice's chunks as they come, then the usage of them all. `continuous`: usage
        so far on every chunk (vLLM's `continuous_usage_stats`)."""
        created = int(time.time())
        streams = [
            self._choice_chunks(run, i, runs, created, model_name, continuous)
            for i, run in enumerate(runs)
        ]
        async with aclosing(merge(streams)) as chunks:
            async for chunk in chunks:
                yield chunk
        if include_usage:
            yield ChatCompletionChunk(
                id=runs[0].request.request_id,
                object="chat.completion.chunk",
                created=created,
                model=model_name,
                choices=[],
                usage=usage(runs),
            ).model_dump_json(exclude_none=True)

    async def _choice_chunks(
        self,
        run: ChatGeneration,
        index: int,
        runs: list[ChatGeneration],
        created: int,
        model_name: str,
        continuous: bool,
    ) -> AsyncIterator[str]:
        """One choice's chunks: its role, its deltas, its finish reason."""

        def model(delta: ck.ChoiceDelta, finish: str | None = None, usage=None, logprobs=None):
            choices = [ck.Choice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)]
            return ChatCompletionChunk(
                id=runs[0].request.request_id,
                object="chat.completion.chunk",
                created=created,
                model=model_name,
                choices=choices,
                usage=usage,
            )

        def chunk(delta: ck.ChoiceDelta, finish: str | None = None, logprobs=None) -> str:
            so_far = usage(runs) if continuous else None
            return model(delta, finish, so_far, logprobs).model_dump_json(exclude_none=True)

        # Per-chunk usage or logprobs: no template (each chunk differs beyond its text).
        templated = not continuous and run.request.sampling.logprobs is None

        # Reasoning and answer text, nearly every chunk of a stream: one template each.
        text_chunks = {
            "reasoning": ChunkTemplate(model(ck.ChoiceDelta(reasoning=MARKER))),
            "content": ChunkTemplate(model(ck.ChoiceDelta(content=MARKER))),
        }
        yield chunk(ck.ChoiceDelta(role="assistant", content=""))
        async with aclosing(run.deltas()) as deltas:
            async for d in deltas:
                if (template := text_chunks.get(d.kind)) is not None and templated:
                    yield template(d.text)
                elif d.kind != "tool_call":
                    logprobs = None
                    if d.logprobs is not None:
                        logprobs = ck.ChoiceLogprobs(
                            content=token_logprobs(self._harmony, d.logprobs)
                        )
                    yield chunk(ck.ChoiceDelta(**{d.kind: d.text}), logprobs=logprobs)
                else:
                    call = run.parser.tool_calls[d.tool_index]
                    yield chunk(
                        ck.ChoiceDelta(
                            tool_calls=[
                                ck.ChoiceDeltaToolCall(
                                    index=d.tool_index,
                                    id=call.id if d.new_tool_call else None,
                                    type="function" if d.new_tool_call else None,
                                    function=ck.ChoiceDeltaToolCallFunction(
                                        name=d.tool_name if d.new_tool_call else None,
                                        arguments=d.text,
                                    ),
                                )
                            ]
                        )
                    )
        yield chunk(ck.ChoiceDelta(), run.openai_finish_reason())
