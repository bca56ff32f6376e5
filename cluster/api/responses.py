"""`/v1/responses`: OpenAI's Responses API for gpt-oss, with conversation state in a store that
every gateway replica reaches (`response_store.py`), so `previous_response_id` works wherever the
follow-up lands.

Input items become harmony turns (the same renderer as chat: earlier chain of thought is dropped
unless its turn called a tool); the model's channels become output items: analysis -> a
`reasoning` item with its text, final -> a `message` with `output_text`, commentary to a function
-> `function_call` items. Streaming emits OpenAI's events in OpenAI's order, each with its
`sequence_number`. `usage` counts reasoning tokens.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

from openai.types.responses import Response

from cluster.api.chat import ChatGeneration, prefix_key
from cluster.api.errors import OpenAIError
from cluster.api.generation import Caller, Demand, Service, Stream
from cluster.api.output_format import ReplyFormat
from cluster.api.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningItemIn,
    ResponsesRequest,
)
from cluster.api.response_store import ResponseStore, StoredResponse, StoreUnavailable
from cluster.api.sampling import check_model
from cluster.api.stops import StopMatcher
from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.harmony import Harmony, ToolCall, ToolSpec, Turn

logger = logging.getLogger(__name__)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_turns(items: str | list, earlier: tuple[Turn, ...]) -> tuple[str | None, list[Turn]]:
    """Developer instructions from system/developer messages, and the turns after `earlier`."""
    if isinstance(items, str):
        return None, [Turn("user", items)]
    instructions: list[str] = []
    turns: list[Turn] = []
    names = {c.id: c.name for t in earlier for c in t.tool_calls}
    reasoning: str | None = None
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            if item.role in ("system", "developer"):
                instructions.append(item.text)
            elif item.role == "user":
                turns.append(Turn("user", item.text))
            else:
                turns.append(Turn("assistant", item.text, reasoning))
                reasoning = None
        elif isinstance(item, ReasoningItemIn):
            reasoning = "".join(part.text for part in item.content or ())
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            names[item.call_id] = item.name
            last = turns[-1] if turns else None
            if (
                last is not None
                and last.role == "assistant"
                and last.tool_calls
                and not last.content
            ):
                turns[-1] = Turn("assistant", None, last.reasoning, (*last.tool_calls, call))
            else:
                turns.append(Turn("assistant", None, reasoning, (call,)))
                reasoning = None
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in names:
                raise OpenAIError(
                    400,
                    f"input.{i}.call_id `{item.call_id}` answers no earlier function call",
                    param=f"input.{i}.call_id",
                )
            turns.append(Turn("tool", item.output, tool_name=names[item.call_id]))
    return ("\n\n".join(instructions) or None), turns


def _tool_choice(body: ResponsesRequest) -> str | dict[str, str]:
    choice = body.tool_choice or "auto"
    return choice if isinstance(choice, str) else choice.model_dump()


def _text_format(body: ResponsesRequest) -> dict[str, Any]:
    """The response's `text.format`: the request's, echoed as OpenAI does."""
    fmt = body.text and body.text.format
    if fmt is None:
        return {"type": "text"}
    return fmt.model_dump(by_alias=True, exclude_none=True)


class ResponsesService(Service):
    endpoint = "responses"

    def __init__(
        self, config: ClusterConfig, harmony: Harmony, engine, store: ResponseStore
    ) -> None:
        super().__init__(config, harmony, engine)
        self._store = store

    async def _stored(self, response_id: str, param: str | None = None) -> StoredResponse:
        try:
            stored = await self._store.get(response_id)
        except StoreUnavailable:
            raise OpenAIError(
                503,
                "The response store is unavailable; calls that need stored "
                "responses fail until it is back.",
                code="store_unavailable",
            ) from None
        if stored is None:
            raise OpenAIError(
                404,
                f"Response with id '{response_id}' not found.",
                param=param,
                code="response_not_found",
            )
        return stored

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        return (await self._stored(response_id)).response

    async def delete(self, response_id: str) -> dict[str, Any]:
        await self._stored(response_id)
        try:
            await self._store.delete(response_id)
        except StoreUnavailable:
            raise OpenAIError(
                503, "The response store is unavailable.", code="store_unavailable"
            ) from None
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def create(self, body: ResponsesRequest, caller: Caller):
        check_model(self._config, body.model)
        earlier: tuple[Turn, ...] = ()
        if body.previous_response_id:
            stored = await self._stored(body.previous_response_id, "previous_response_id")
            earlier = stored.turns
        effort = (body.reasoning and body.reasoning.effort) or self._config.default_effort
        instructions, turns = input_turns(body.input, earlier)
        instructions = "\n\n".join(x for x in (body.instructions, instructions) if x) or None
        tools = [
            ToolSpec(t.name, t.description or "", t.parameters)
            for t in body.tools or ()
            if body.tool_choice != "none"
        ]
        conversation = (*earlier, *turns)
        reply = ReplyFormat.of(
            body.text and body.text.format,
            "text.format.schema",
            body.tool_choice,
            tools,
            body.thinking_token_budget,
        )

        instructions = reply.instructions(instructions)  # the schema, as the model reads it
        render = self.renderer(
            body,
            conversation,
            instructions,
            tools,
            id_prefix="resp",
            requested_max_tokens=body.max_output_tokens,
            max_tokens_param="max_output_tokens",
            reply=reply,
        )

        demand = Demand(
            caller.tenant,
            prefix_key(effort, instructions, tools),
            bool(tools),
            partial(render, degraded=True),
        )
        run = ChatGeneration(
            request=render(effort),
            stop=StopMatcher([]),
            demand=demand,
            endpoint="responses",
            caller=caller,
            deadline_s=self._config.efforts[effort].deadline_s,
            migration_limit=self._config.gateway.migration_limit,
            parser=self._harmony.parser(),
        )
        await run.start(self._engine)
        reply = _Reply(body, run, conversation, self._store, effort)
        if body.stream:
            return Stream(reply.events(), run.close, done_marker=False), run.headers
        return await reply.complete(), run.headers


class _Reply:
    """One response being produced: its output items as they grow, then stored."""

    def __init__(
        self, body: ResponsesRequest, run: ChatGeneration, conversation, store, effort: Effort
    ) -> None:
        self.body, self.run, self.conversation, self.store = body, run, conversation, store
        self.effort = effort
        self.id = _id("resp")
        self.created = int(time.time())
        self.items: list[dict[str, Any]] = []
        self.seq = 0
        self.final: dict[str, Any] = {}  # the finished Response

    def response(self, status: str) -> dict[str, Any]:
        body, run = self.body, self.run
        usage = None
        if status != "in_progress":
            usage = {
                "input_tokens": run.prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": run.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": run.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": run.reasoning_tokens},
                "total_tokens": run.prompt_tokens + run.completion_tokens,
            }
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        data = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": body.model,
            "output": self.items if status != "in_progress" else [],
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": self.effort.value, "summary": None},
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
            "tool_choice": _tool_choice(body),
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "store": body.store,
            "metadata": body.metadata or {},
            "usage": usage,
            "error": None,
            "incomplete_details": incomplete,
            "text": {"format": _text_format(body)},
            "truncation": "disabled",
            "user": body.user,
        }
        if status != "in_progress":
            Response.model_validate(data)  # the final wire shape is OpenAI's, checked once
        return data

    def _event(self, kind: str, **fields: Any) -> dict[str, str]:
        self.seq += 1
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        return {"event": kind, "data": json.dumps(payload)}

    async def events(self) -> AsyncIterator[dict[str, str]]:
        yield self._event("response.created", response=self.response("in_progress"))
        yield self._event("response.in_progress", response=self.response("in_progress"))
        open_item: dict[str, Any] | None = None
        async with aclosing(self.run.deltas()) as deltas:
            async for d in deltas:
                kind = (
                    "function_call"
                    if d.kind == "tool_call"
                    else ("reasoning" if d.kind == "reasoning" else "message")
                )
                if open_item is not None and (open_item["type"] != kind or d.new_tool_call):
                    for event in self._close(open_item):
                        yield event
                    open_item = None
                if open_item is None:
                    open_item = self._open(kind, d)
                    for event in self._opened(open_item):
                        yield event
                for event in self._delta(open_item, d.text):
                    yield event
        if open_item is not None:
            for event in self._close(open_item):
                yield event
        self.final = await self._finish()
        yield self._event(f"response.{self.final['status']}", response=self.final)

    async def complete(self) -> dict[str, Any]:
        async for _ in self.events():
            pass
        return self.final

    def _status(self) -> str:
        return "incomplete" if self.run.finish_reason == "length" else "completed"

    async def _finish(self) -> dict[str, Any]:
        """The final Response, stored (when asked) with the conversation it ends."""
        output = Turn(
            "assistant",
            "".join(i["content"][0]["text"] for i in self.items if i["type"] == "message") or None,
            "".join(i["content"][0]["text"] for i in self.items if i["type"] == "reasoning")
            or None,
            tuple(
                ToolCall(i["call_id"], i["name"], i["arguments"])
                for i in self.items
                if i["type"] == "function_call"
            ),
        )
        final = self.response(self._status())
        if self.body.store:
            stored = StoredResponse(final, (*self.conversation, output))
            try:
                await self.store.put(self.id, stored)
            except StoreUnavailable:  # served anyway; a follow-up naming it gets 404 or 503
                logger.warning("response store unavailable: %s was not stored", self.id)
        return final

    def _open(self, kind: str, delta) -> dict[str, Any]:
        if kind == "reasoning":
            return {
                "type": "reasoning",
                "id": _id("rs"),
                "summary": [],
                "content": [{"type": "reasoning_text", "text": ""}],
                "status": "in_progress",
            }
        if kind == "message":
            return {
                "type": "message",
                "id": _id("msg"),
                "role": "assistant",
                "status": "in_progress",
                "content": [{"type": "output_text", "text": "", "annotations": []}],
            }
        call = self.run.parser.tool_calls[delta.tool_index]
        return {
            "type": "function_call",
            "id": _id("fc"),
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }

    def _opened(self, item: dict[str, Any]):
        index = len(self.items)
        self.items.append(item)
        added = {**item, "content": []} if item["type"] in ("reasoning", "message") else item
        yield self._event("response.output_item.added", output_index=index, item=added)
        if item["type"] == "message":
            yield self._event(
                "response.content_part.added",
                output_index=index,
                item_id=item["id"],
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )

    def _delta(self, item: dict[str, Any], text: str):
        index = self.items.index(item)
        if item["type"] == "function_call":
            item["arguments"] += text
            yield self._event(
                "response.function_call_arguments.delta",
                output_index=index,
                item_id=item["id"],
                delta=text,
            )
            return
        item["content"][0]["text"] += text
        if item["type"] == "reasoning":
            yield self._event(
                "response.reasoning_text.delta",
                output_index=index,
                item_id=item["id"],
                content_index=0,
                delta=text,
            )
        else:
            yield self._event(
                "response.output_text.delta",
                output_index=index,
                item_id=item["id"],
                content_index=0,
                delta=text,
                logprobs=[],
            )

    def _close(self, item: dict[str, Any]):
        index = self.items.index(item)
        item["status"] = "completed"
        if item["type"] == "function_call":
            yield self._event(
                "response.function_call_arguments.done",
                output_index=index,
                item_id=item["id"],
                arguments=item["arguments"],
            )
        else:
            text = item["content"][0]["text"]
            if item["type"] == "reasoning":
                yield self._event(
                    "response.reasoning_text.done",
                    output_index=index,
                    item_id=item["id"],
                    content_index=0,
                    text=text,
                )
            else:
                yield self._event(
                    "response.output_text.done",
                    output_index=index,
                    item_id=item["id"],
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            if item["type"] == "message":
                yield self._event(
                    "response.content_part.done",
                    output_index=index,
                    item_id=item["id"],
                    content_index=0,
                    part=item["content"][0],
                )
        yield self._event("response.output_item.done", output_index=index, item=item)
