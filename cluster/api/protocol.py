"""OpenAI request types as the gateway accepts them (responses use the `openai` package's types).

Top-level fields are strict: an argument we do not implement is a 400 naming it, never silently
ignored. Message objects tolerate extra keys, because clients echo whole response messages
(`refusal`, `annotations`, ...) back into the next request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from cluster.contracts import Effort

MAX_TOP_LOGPROBS = 20  # OpenAI's limits (and vLLM's default max_logprobs)
MAX_COMPLETION_LOGPROBS = 5


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCall(_Lenient):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # the older vLLM name

    @property
    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class FunctionSpec(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpecIn(_Request):
    type: Literal["function"]
    function: FunctionSpec


_NAME = r"^[A-Za-z0-9_-]+$"


class JsonSchemaSpec(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """Chat's `response_format`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with, and only with, type json_schema")
        return self

    # The fields of the Responses API's flat `text.format`, so both read alike.
    @property
    def name(self) -> str | None:
        return self.json_schema and self.json_schema.name

    @property
    def description(self) -> str | None:
        return self.json_schema and self.json_schema.description

    @property
    def schema_(self) -> dict[str, Any] | None:
        return self.json_schema and self.json_schema.schema_


class FunctionName(_Request):
    name: str = Field(min_length=1)


class NamedToolChoice(_Request):
    """Chat's `tool_choice` naming one function."""

    type: Literal["function"]
    function: FunctionName

    @property
    def name(self) -> str:  # as the Responses API's flat choice has it
        return self.function.name


ToolChoice = Literal["auto", "none", "required"]


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingRequest(_Request):
    """Fields chat and completions share."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1)
    user: str | None = None
    max_tokens: PositiveInt | None = None

    @property
    def alternatives(self) -> int | None:
        """Top alternatives to report per token; None: no logprobs."""
        return None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _stream_options(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream=true")
        return self


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    reasoning_effort: Effort | None = None
    max_completion_tokens: PositiveInt | None = None
    tools: list[ToolSpecIn] | None = None
    tool_choice: ToolChoice | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # vLLM's name: at most this many analysis tokens, so the answer keeps its share.
    thinking_token_budget: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    @property
    def alternatives(self) -> int | None:
        """Top alternatives to report per answer token; None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    n: int = Field(1, ge=1)
    max_tokens: PositiveInt | None = 16
    echo: Literal[False] | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: None = None

    @property
    def alternatives(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, v: Any) -> str | list[int]:
        if isinstance(v, list) and v and isinstance(v[0], str | list):
            if len(v) != 1:
                raise ValueError("batched prompts are not supported: send one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v


# -- /v1/responses --------------------------------------------------------------------------------


class ContentText(_Lenient):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentText]

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class ReasoningText(_Lenient):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItemIn(_Lenient):
    type: Literal["reasoning"]
    content: list[ReasoningText] | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItemIn


class ReasoningParam(_Request):
    effort: Effort | None = None
    summary: str | None = None  # accepted; gpt-oss returns the full reasoning text instead


class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Request):
    """The Responses API's `text.format`: the schema's fields sit beside `type`."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64, pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs name and schema")
        return self


class TextParam(_Request):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted; gpt-oss has no knob


class NamedFunctionChoice(_Request):
    """The Responses API's `tool_choice` naming one function."""

    type: Literal["function"]
    name: str = Field(min_length=1)


class ResponsesRequest(_Request):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    reasoning: ReasoningParam | None = None
    max_output_tokens: PositiveInt | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    thinking_token_budget: PositiveInt | None = None
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    metadata: dict[str, str] | None = None

    @property
    def seed(self) -> None:  # the Responses API has none; the engine request reads it
        return None

    @property
    def alternatives(self) -> None:  # no logprobs in this API
        return None

    @property
    def n(self) -> int:  # one choice per response
        return 1

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: str | list) -> str | list:
        if not v:
            raise ValueError("input must not be empty")
        return v
