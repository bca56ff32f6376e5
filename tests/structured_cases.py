"""Bounded JSON Schemas, forced tool calls and their checks, shared by the unit (mock in-process),
integration (mock on a local cluster) and engine (vLLM on CPU, random weights) tiers."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, Field

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            }
        },
        "required": ["person"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "integer", "minimum": -5, "maximum": 5},
                "minItems": 1,
                "maxItems": 4,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
        "additionalProperties": False,
    },
    "string": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "maxLength": 8},
            "note": {"type": "string", "maxLength": 20},
        },
        "required": ["code"],
        "additionalProperties": False,
    },
    "number": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "rank": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10},
        },
        "required": ["score", "rank"],
        "additionalProperties": False,
    },
}


class Verdict(BaseModel):
    """What `client.chat.completions.parse(response_format=Verdict)` must give back."""

    label: Literal["yes", "no", "maybe"]
    confidence: int = Field(ge=0, le=100)
    reason: str = Field(max_length=24)


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"zone": {"enum": ["utc", "cet", "pst"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMETERS}},
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}


def json_schema_format(name: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True},
    }


def check_instance(text: str | None, schema: dict[str, Any]) -> Any:
    """The answer is one JSON value valid against the schema."""
    assert text, "no answer"
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def check_call(name: str, arguments: str) -> None:
    """A call to an offered function with arguments valid against its parameters."""
    assert name in PARAMETERS, name
    jsonschema.validate(json.loads(arguments), PARAMETERS[name])


ASK = [{"role": "user", "content": "Fill in the form."}]
BUDGET = 24  # analysis tokens: the answer gets the rest


def check_schema_answers(client, name: str, options: dict[str, Any]) -> None:
    """Non-streamed and streamed answers under the schema, reasoning present within the budget."""
    fmt = json_schema_format(name)
    done = client.chat.completions.create(messages=ASK, response_format=fmt, seed=1, **options)
    check_instance(done.choices[0].message.content, SCHEMAS[name])
    assert done.choices[0].finish_reason == "stop"
    assert 0 < done.usage.completion_tokens_details.reasoning_tokens <= BUDGET
    assert done.choices[0].message.reasoning
    stream = client.chat.completions.create(
        messages=ASK, response_format=fmt, seed=2, stream=True, **options
    )
    check_instance(
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices), SCHEMAS[name]
    )


def check_parse_and_text_format(client, options: dict[str, Any]) -> None:
    """The SDK's `parse()` with a pydantic model, and the Responses API's `text.format`."""
    parsed = client.chat.completions.parse(messages=ASK, response_format=Verdict, **options)
    assert isinstance(parsed.choices[0].message.parsed, Verdict)
    fmt = {"type": "json_schema", "name": "nested", "schema": SCHEMAS["nested"], "strict": True}
    response = client.responses.create(
        model=options["model"],
        input="Fill in the form.",
        text={"format": fmt},
        max_output_tokens=options["max_tokens"],
        reasoning={"effort": "medium"},
        extra_body=options["extra_body"],
    )
    check_instance(response.output_text, SCHEMAS["nested"])
    assert response.usage.output_tokens_details.reasoning_tokens > 0


def check_forced_calls(client, options: dict[str, Any]) -> None:
    """`required` calls an offered function, a named choice that one, with valid arguments."""
    named = {"type": "function", "function": {"name": "get_time"}}
    for choice in ("required", named):
        done = client.chat.completions.create(
            messages=ASK, tools=TOOLS, tool_choice=choice, **options
        )
        (call,) = done.choices[0].message.tool_calls
        check_call(call.function.name, call.function.arguments)
        assert done.choices[0].finish_reason == "tool_calls"
        if choice is named:
            assert call.function.name == "get_time"


def options(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 400,
        "reasoning_effort": "medium",
        "extra_body": {"thinking_token_budget": BUDGET},
    }
