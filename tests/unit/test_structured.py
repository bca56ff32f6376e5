"""Structured outputs, forced tool calls and the reasoning budget through the gateway with the
mock engine in-process (the openai SDK as the client, no Ray)."""

import json

import httpx
import openai
import pytest

from cluster.api.engine_client import InProcessEngine
from cluster.api.errors import OpenAIError
from cluster.api.gateway import create_app
from cluster.api.output_format import ReplyFormat, check_schema
from cluster.api.protocol import ResponseFormat, TextFormat
from cluster.config import EffortProfile
from cluster.contracts import Effort
from cluster.engine.mock import MockEngine
from cluster.engine.structural_tag import structural_tag
from cluster.harmony import SPECIAL_TOKENS, ToolSpec
from tests.helpers import fast_config
from tests.structured_cases import (
    SCHEMAS,
    TOOLS,
    Verdict,
    check_call,
    check_instance,
    json_schema_format,
)

MODEL = "gpt-oss-120b"
ASK = [{"role": "user", "content": "Fill in the form."}]


class Recorder(InProcessEngine):
    def __init__(self, engine):
        super().__init__(engine)
        self.requests = []

    def generate(self, request):
        self.requests.append(request)
        return self.engine.generate(request)


@pytest.fixture
def recorder(harmony):
    return Recorder(MockEngine(fast_config(), harmony))


@pytest.fixture
async def sdk(harmony, recorder):
    app = create_app(fast_config(), harmony, recorder)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    async with openai.AsyncOpenAI(base_url="http://gw/v1", api_key="none", http_client=http) as c:
        yield c


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_json_schema_answers_hold_to_the_schema_streaming_or_not(
    sdk, recorder, harmony, name
):
    for seed in range(3):
        kw = {"model": MODEL, "messages": ASK, "seed": seed, "reasoning_effort": "medium"}
        done = await sdk.chat.completions.create(response_format=json_schema_format(name), **kw)
        message = done.choices[0].message
        check_instance(message.content, SCHEMAS[name])
        assert message.reasoning and done.usage.completion_tokens_details.reasoning_tokens > 0
        stream = await sdk.chat.completions.create(
            response_format=json_schema_format(name), stream=True, **kw
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == message.content  # same seed, same answer
    constraint = recorder.requests[-1].constraint
    assert constraint.final_schema == SCHEMAS[name] and constraint.final
    # The model sees the schema as harmony's developer message carries it.
    assert "# Response Formats" in harmony.decode(recorder.requests[-1].prompt_token_ids)


async def test_parse_with_a_pydantic_model_and_json_object(sdk):
    for seed in range(3):
        parsed = await sdk.chat.completions.parse(
            model=MODEL, messages=ASK, response_format=Verdict, seed=seed
        )
        assert isinstance(parsed.choices[0].message.parsed, Verdict)
    anything = await sdk.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, seed=1
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


async def test_responses_text_format(sdk):
    fmt = {"type": "json_schema", "name": "nested", "schema": SCHEMAS["nested"], "strict": True}
    done = await sdk.responses.create(model=MODEL, input="Fill in the form.", text={"format": fmt})
    check_instance(done.output_text, SCHEMAS["nested"])
    assert (
        done.text.format.type == "json_schema"
        and done.usage.output_tokens_details.reasoning_tokens > 0
    )
    parsed = await sdk.responses.parse(model=MODEL, input="Judge it.", text_format=Verdict)
    assert isinstance(parsed.output_parsed, Verdict)


async def test_forced_tool_calls_name_an_offered_function_with_valid_arguments(sdk):
    for seed in range(3):
        done = await sdk.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed
        )
        (call,) = done.choices[0].message.tool_calls
        check_call(call.function.name, call.function.arguments)
        assert done.choices[0].finish_reason == "tool_calls"
        named = {"type": "function", "function": {"name": "get_time"}}
        done = await sdk.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, seed=seed
        )
        (call,) = done.choices[0].message.tool_calls
        assert call.function.name == "get_time"
        check_call(call.function.name, call.function.arguments)
    response = await sdk.responses.create(
        model=MODEL,
        input="Fill in the form.",
        tools=[{"type": "function", **t["function"]} for t in TOOLS],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    (item,) = [i for i in response.output if i.type == "function_call"]
    assert item.name == "get_weather"
    check_call(item.name, item.arguments)


async def test_the_reasoning_budget_caps_the_analysis(sdk, recorder):
    done = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        reasoning_effort="high",
        extra_body={"thinking_token_budget": 12},
    )
    details = done.usage.completion_tokens_details
    assert 0 < details.reasoning_tokens <= 12 and done.choices[0].message.content
    assert recorder.requests[-1].constraint.reasoning_budget == 12


BAD = [
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            }
        },
        "response_format.json_schema.schema",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"not": {}}},
            }
        },
        "response_format.json_schema.schema",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"thinking_token_budget": 0}, "thinking_token_budget"),
]


@pytest.mark.parametrize(("extra", "param"), BAD)
async def test_bad_formats_and_choices_are_400s_naming_the_parameter(sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, messages=ASK, extra_body=extra)
    assert caught.value.body["param"] == param, caught.value.body
    assert caught.value.body["type"] == "invalid_request_error"


def test_unsupported_keywords_are_named_with_where_they_are():
    schema = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(OpenAIError, match=r"`uniqueItems` \(at /properties/a\)"):
        check_schema(schema, "response_format.json_schema.schema")


def test_the_constraint_keeps_the_answer_its_share_and_costs_nothing_unasked():
    profile = EffortProfile(
        output_tokens={"median_tokens": 100}, default_max_tokens=100, ttft_slo_s=1, itl_slo_s=1
    )
    plain = ReplyFormat.of()
    assert plain.constraint(Effort.LOW, profile, 1_000) is None  # no grammar at all
    schema = ReplyFormat.of(ResponseFormat(type="json_object"), tools=(ToolSpec("f"),))
    c = schema.constraint(Effort.LOW, profile, 1_000)
    assert c.reasoning_budget == 500 and c.final and [t.name for t in c.tools] == ["f"]
    capped = profile.model_copy(update={"max_reasoning_tokens": 64})
    assert schema.constraint(Effort.LOW, capped, 1_000).reasoning_budget == 64
    assert (
        plain.constraint(Effort.LOW, capped, 1_000).reasoning_budget == 64
    )  # a budget alone binds too
    forced = ReplyFormat.of(tool_choice="g", tools=(ToolSpec("f"), ToolSpec("g")))
    c = forced.constraint(Effort.LOW, profile, 10)
    assert not c.final and [t.name for t in c.tools] == ["g"] and c.reasoning_budget == 5


def test_the_structural_tag_binds_the_channels_not_the_first_token():
    schema = ReplyFormat.of(
        TextFormat(type="json_schema", name="e", schema=SCHEMAS["enum"]), reasoning_budget=7
    )
    profile = EffortProfile(
        output_tokens={"median_tokens": 100}, default_max_tokens=100, ttft_slo_s=1, itl_slo_s=1
    )
    low = structural_tag(schema.constraint(Effort.LOW, profile, 100))
    analysis, ending = low["format"]["elements"]
    assert analysis["type"] == "optional"  # at low effort, reasoning may come first
    channel, name, body = analysis["content"]["elements"][0]["elements"]
    assert name == {"type": "const_string", "value": "analysis"}
    assert channel == {"type": "token", "token": 200_005}  # markers are special tokens, by id
    assert body["content"] == {"type": "any_text", "max_tokens": 7}  # within its budget
    assert ending["elements"][-1]["content"]["json_schema"] == SCHEMAS["enum"]
    assert ending["elements"][-1]["end"] == ""  # harmony's stop token ends it
    high = structural_tag(schema.constraint(Effort.HIGH, profile, 100))
    assert high["format"]["elements"][0]["type"] == "sequence"  # above low effort, it must


def test_the_marker_ids_are_the_encodings(harmony):
    assert {t: harmony.special_id(t) for t in SPECIAL_TOKENS} == SPECIAL_TOKENS
