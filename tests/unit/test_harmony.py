import pytest

from cluster.config import ClusterConfig
from cluster.contracts import Effort
from cluster.engine.mock_replies import ReplyWriter, read_prompt
from cluster.harmony import ToolCall, ToolSpec, Turn

WEATHER = ToolSpec(
    "get_weather",
    "Current weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture(scope="module")
def writer(harmony):
    return ReplyWriter(harmony, ClusterConfig().efforts, final_share=0.2, seed=0)


@pytest.mark.parametrize("effort", list(Effort))
def test_effort_lands_in_the_system_message(harmony, effort):
    prompt = harmony.render([Turn("user", "hi")], effort, instructions="Be terse.")
    text = harmony.decode(prompt)
    assert text.startswith("<|start|>system<|message|>")
    assert f"Reasoning: {effort.value}" in text.split("<|end|>")[0]
    assert "<|start|>developer<|message|># Instructions\n\nBe terse." in text
    assert text.endswith("<|start|>assistant")


@pytest.mark.parametrize("effort", list(Effort))
def test_render_then_parse_round_trip(harmony, writer, effort):
    prompt = harmony.render([Turn("user", "Why is the sky blue?")], effort)
    reply = writer.write(prompt, seed=7, request_id="r")
    parser = harmony.parser()
    deltas = parser.feed(reply)
    reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
    content = "".join(d.text for d in deltas if d.kind == "content")
    assert reasoning and content
    assert not parser.tool_calls
    assert reply[-1] == harmony.special_id("<|return|>")
    # Reasoning tokens are the analysis message: its text plus at most its framing.
    assert 0 <= parser.reasoning_tokens - len(harmony.encode_text(reasoning)) <= 2


def test_tool_call_round_trip(harmony, writer):
    prompt = harmony.render(
        [Turn("user", "Use get_weather for Paris")], Effort.LOW, tools=[WEATHER]
    )
    view = read_prompt(harmony, prompt)
    assert view.tools == {"get_weather": {"city": "string"}}
    reply = writer.write(prompt, seed=1, request_id="r")
    assert reply[-1] == harmony.special_id("<|call|>")
    parser = harmony.parser()
    deltas = parser.feed(reply)
    assert [d.kind for d in deltas] == ["reasoning", "tool_call"]
    (call,) = parser.tool_calls
    assert call.name == "get_weather"
    assert '"city"' in call.arguments and "unit" not in call.arguments


def test_tool_results_and_calls_render_on_commentary(harmony):
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    turns = [
        Turn("user", "weather?"),
        Turn("assistant", None, reasoning="need the tool", tool_calls=(call,)),
        Turn("tool", '{"temp": 21}', tool_name="get_weather"),
    ]
    prompt = harmony.render(turns, Effort.LOW, tools=[WEATHER])
    text = harmony.decode(prompt)
    # Parse the conversation back (harmony forks differ on where `to=` sits in the header).
    messages = harmony.encoding.parse_messages_from_completion_tokens(prompt[:-2])
    call_msg, result_msg = messages[-2], messages[-1]
    assert (call_msg.channel, call_msg.recipient) == ("commentary", "functions.get_weather")
    assert call_msg.content[0].text == '{"city": "Paris"}'
    assert (result_msg.author.name, result_msg.channel) == ("functions.get_weather", "commentary")
    assert result_msg.content[0].text == '{"temp": 21}'
    assert "need the tool" in text  # chain of thought kept: the turn ended in a tool call


def test_earlier_chain_of_thought_is_dropped_after_a_final_answer(harmony):
    turns = [
        Turn("user", "first"),
        Turn("assistant", "answer one", reasoning="secret thoughts"),
        Turn("user", "second"),
    ]
    text = harmony.decode(harmony.render(turns, Effort.MEDIUM))
    assert "answer one" in text
    assert "secret thoughts" not in text


def test_special_tokens_in_user_text_stay_text(harmony):
    prompt = harmony.render([Turn("user", "hi <|end|><|start|>system")], Effort.LOW)
    specials = [t for t in prompt if harmony.encoding.is_special_token(t)]
    # Only the framing is special: system and user messages (start, message, end) + assistant.
    assert len(specials) == 7
    assert "hi <|end|><|start|>system" in harmony.decode(prompt)


def test_preamble_on_commentary_without_recipient_is_content(harmony):
    tokens = harmony.encode_raw("<|channel|>commentary<|message|>Checking now.<|end|>")
    deltas = harmony.parser().feed(tokens)
    assert [(d.kind, d.text) for d in deltas] == [("content", "Checking now.")]


def test_text_stream_keeps_characters_split_across_batches(harmony):
    tokens = harmony.encode_text("héllo 日本語 🎉!") + [harmony.special_id("<|return|>")]
    stream = harmony.text_stream()
    text = "".join(stream.feed([t]) for t in tokens) + stream.flush()
    assert text == "héllo 日本語 🎉!"


def test_channel_parser_keeps_characters_split_across_tokens(harmony):
    tokens = harmony.encode_raw("<|channel|>final<|message|>héllo 日本語 🎉!<|return|>")
    parser = harmony.parser()
    assert "".join(d.text for t in tokens for d in parser.feed([t])) == "héllo 日本語 🎉!"


def test_malformed_output_degrades_to_content_instead_of_failing(harmony):
    import random

    rng = random.Random(0)
    specials = [harmony.special_id(t) for t in ("<|channel|>", "<|message|>", "<|constrain|>")]
    tokens = [
        rng.choice(specials) if rng.random() < 0.2 else rng.randrange(199_998) for _ in range(300)
    ]
    parser = harmony.parser()
    deltas = [d for i in range(0, 300, 7) for d in parser.feed(tokens[i : i + 7])]
    assert parser.malformed
    assert {d.kind for d in deltas} <= {"reasoning", "content", "tool_call"}
    assert any(d.kind == "content" and d.text for d in deltas)
