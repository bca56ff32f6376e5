"""The one harmony path: render a conversation with its reasoning effort, parse tokens into channels.

The gateway renders every request here and parses every engine's token stream here; the mock
engine writes its replies with the same encoding. Channels map to OpenAI fields as vLLM does:
analysis -> reasoning, final -> content, commentary addressed to `functions.X` -> a tool call
(commentary without a recipient is a user-visible preamble, so it joins the content).
"""

from __future__ import annotations

import codecs
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    StreamState,
    SystemContent,
    ToolDescription,
    load_harmony_encoding,
)

from cluster.contracts import Effort, TokenLogprob
from cluster.vocab import ensure_vocab

TOOL_NAMESPACE = "functions"
# o200k_harmony: 199,998 ordinary tokens, then special tokens up to the model's vocabulary size.
FIRST_SPECIAL_TOKEN, VOCAB_SIZE = 199_998, 201_088
# Its message markers by id, for grammars built where no encoding is loaded (a test checks them).
SPECIAL_TOKENS = {
    "<|constrain|>": 200_003,
    "<|channel|>": 200_005,
    "<|start|>": 200_006,
    "<|end|>": 200_007,
    "<|message|>": 200_008,
}

_EFFORTS = {
    Effort.LOW: ReasoningEffort.LOW,
    Effort.MEDIUM: ReasoningEffort.MEDIUM,
    Effort.HIGH: ReasoningEffort.HIGH,
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Turn:
    """One protocol-neutral conversation turn (chat messages and Responses items both map here)."""

    role: Literal["user", "assistant", "tool"]
    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str | None = None


class Harmony:
    """Loaded o200k_harmony encoding (offline) with gpt-oss's rendering and parsing rules."""

    def __init__(self, vocab_dir: str | None = None, start_date: dt.date | None = None) -> None:
        ensure_vocab(vocab_dir)
        self.encoding: HarmonyEncoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        self._start_date = start_date

    @cached_property
    def stop_token_ids(self) -> tuple[int, ...]:
        """`<|return|>` and `<|call|>`: an assistant turn ends with an answer or a tool call."""
        return tuple(self.encoding.stop_tokens_for_assistant_actions())

    @cached_property
    def raw_stop_token_ids(self) -> tuple[int, ...]:
        """Raw completions also stop at `<|endoftext|>`."""
        return (*self.stop_token_ids, self.special_id("<|endoftext|>"))

    def special_id(self, text: str) -> int:
        """One special token's id: slow (the encoder scans for every other special token), so
        never per request."""
        (token,) = self.encoding.encode(text, allowed_special={text})
        return token

    def encode_text(self, text: str) -> list[int]:
        """Plain text to tokens; special-token look-alikes stay text."""
        return self.encoding.encode(text, disallowed_special=())

    def encode_raw(self, text: str) -> list[int]:
        """Raw completion prompts: special tokens written in the text are control tokens."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.encoding.decode(token_ids)

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes (a character may span tokens, so they need not be UTF-8 alone)."""
        return self.encoding.decode([token], errors="surrogateescape").encode(
            "utf-8", "surrogateescape"
        )

    def text_stream(self) -> TextStream:
        return TextStream(self.encoding)

    def render(
        self,
        turns: Sequence[Turn],
        effort: Effort,
        instructions: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> list[int]:
        """Token ids of the conversation, ending with `<|start|>assistant` for the reply."""
        system = SystemContent.new().with_reasoning_effort(_EFFORTS[effort])
        date = self._start_date or dt.datetime.now(dt.UTC).date()
        system = system.with_conversation_start_date(date.isoformat())
        head = [Message.from_role_and_content(Role.SYSTEM, system)]
        if instructions or tools:
            developer = DeveloperContent.new()
            if instructions:
                developer = developer.with_instructions(instructions)
            if tools:
                developer = developer.with_function_tools(
                    [
                        ToolDescription.new(t.name, t.description, parameters=t.parameters)
                        for t in tools
                    ]
                )
            head.append(Message.from_role_and_content(Role.DEVELOPER, developer))
        body = [m for turn in turns for m in _turn_messages(turn)]
        return self.encoding.render_conversation_for_completion(
            Conversation.from_messages(head + body), Role.ASSISTANT
        )

    def parser(self) -> ChannelParser:
        return ChannelParser(self)


def _turn_messages(turn: Turn) -> list[Message]:
    if turn.role == "user":
        return [Message.from_role_and_content(Role.USER, turn.content or "")]
    if turn.role == "tool":
        author = Author.new(Role.TOOL, f"{TOOL_NAMESPACE}.{turn.tool_name}")
        message = Message.from_author_and_content(author, turn.content or "")
        return [message.with_channel("commentary").with_recipient("assistant")]
    messages = []
    if turn.reasoning:
        # Earlier chain of thought is dropped by harmony unless the turn ended in a tool call.
        analysis = Message.from_role_and_content(Role.ASSISTANT, turn.reasoning)
        messages.append(analysis.with_channel("analysis"))
    for call in turn.tool_calls:
        message = Message.from_role_and_content(Role.ASSISTANT, call.arguments)
        messages.append(
            message.with_channel("commentary")
            .with_recipient(f"{TOOL_NAMESPACE}.{call.name}")
            .with_content_type("<|constrain|>json")
        )
    if turn.content:
        final = Message.from_role_and_content(Role.ASSISTANT, turn.content)
        messages.append(final.with_channel("final"))
    return messages


class TextStream:
    """Token ids to text in batches, dropping special tokens (vLLM's skip_special_tokens); a
    character whose bytes straddle two batches comes out whole."""

    def __init__(self, encoding: HarmonyEncoding) -> None:
        self._encoding = encoding
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_ids: Iterable[int]) -> str:
        ids = [t for t in token_ids if not self._encoding.is_special_token(t)]
        # surrogateescape round-trips partial UTF-8 sequences back to their bytes.
        raw = self._encoding.decode(ids, errors="surrogateescape").encode(
            "utf-8", "surrogateescape"
        )
        return self._utf8.decode(raw)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


DeltaKind = Literal["reasoning", "content", "tool_call"]
_CONTENT = StreamState.CONTENT


@dataclass
class ChannelDelta:
    kind: DeltaKind
    text: str
    tool_index: int | None = None
    tool_name: str | None = None
    new_tool_call: bool = False
    # Answer deltas, when the request asked: (token id, its logprob and alternatives) per token.
    logprobs: list[tuple[int, TokenLogprob]] | None = None


@dataclass
class ChannelParser:
    """Streams engine token ids into reasoning / content / tool-call deltas, and counts them."""

    harmony: Harmony
    reasoning_tokens: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    _parser: StreamableParser = field(init=False)
    _tool_key: tuple[int, str] | None = field(default=None, init=False)
    _raw: TextStream | None = field(default=None, init=False)
    # Answer tokens whose text harmony has not released yet (a character split across tokens).
    _pending: list[tuple[int, TokenLogprob]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._parser = StreamableParser(self.harmony.encoding, role=Role.ASSISTANT)

    @property
    def malformed(self) -> bool:
        """The model broke harmony's grammar; the rest of its output became plain content."""
        return self._raw is not None

    def feed(
        self, token_ids: Iterable[int], logprobs: Sequence[TokenLogprob] | None = None
    ) -> list[ChannelDelta]:
        """Process tokens; consecutive deltas of the same kind are merged. With `logprobs` (one
        per token), answer deltas carry those of their tokens."""
        out: list[ChannelDelta] = []
        parser = self._parser
        token_ids = list(token_ids)
        for i, token in enumerate(token_ids):
            if self._raw is not None:
                if text := self._raw.feed(token_ids[i:]):
                    _append(out, ChannelDelta("content", text))
                break
            try:
                parser.process(token)
            except HarmonyError:
                self._raw = self.harmony.text_stream()
                continue
            channel = parser.current_channel
            text_token = not self.harmony.encoding.is_special_token(token)
            if channel == "analysis" and text_token:
                self.reasoning_tokens += 1  # its text, as a budget counts it (not `<|end|>`)
            recipient = parser.current_recipient
            calls = bool(recipient and recipient.startswith(f"{TOOL_NAMESPACE}."))
            answer = channel in ("final", "commentary") and not calls
            if logprobs is not None and answer and text_token and parser.state == _CONTENT:
                self._pending.append((token, logprobs[i]))
            delta = parser.last_content_delta
            if not delta:
                continue
            if channel == "analysis":
                _append(out, ChannelDelta("reasoning", delta))
            elif calls:
                _append(out, self._tool_delta(recipient.removeprefix(f"{TOOL_NAMESPACE}."), delta))
            elif answer:
                taken, self._pending = self._pending, []
                _append(out, ChannelDelta("content", delta, logprobs=taken if logprobs else None))
        return out

    def _tool_delta(self, name: str, text: str) -> ChannelDelta:
        key = (len(self._parser.messages), name)
        index = len(self.tool_calls) - 1
        if key != self._tool_key:
            self._tool_key = key
            index += 1
            call = ToolCall(id=f"call_{_short_id()}", name=name, arguments=text)
            self.tool_calls.append(call)
            return ChannelDelta("tool_call", text, index, name, new_tool_call=True)
        call = self.tool_calls[index]
        self.tool_calls[index] = ToolCall(call.id, call.name, call.arguments + text)
        return ChannelDelta("tool_call", text, index, name)


def _append(out: list[ChannelDelta], delta: ChannelDelta) -> None:
    last = out[-1] if out else None
    if (
        last is not None
        and last.kind == delta.kind
        and last.tool_index == delta.tool_index
        and not delta.new_tool_call
    ):
        last.text += delta.text
        if delta.logprobs:
            last.logprobs = (last.logprobs or []) + delta.logprobs
    else:
        out.append(delta)


def _short_id() -> str:
    import uuid

    return uuid.uuid4().hex[:24]
