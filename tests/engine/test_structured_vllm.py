"""Structured outputs enforced by vLLM's grammar on a random-weight gpt-oss: a random model can
only write schema-valid JSON, or a valid call to the forced function, if enforcement works. The
reasoning budget is what makes it finish: random weights rarely end the analysis on their own."""

import math

import pytest

from tests.engine.conftest import MODEL
from tests.structured_cases import (
    SCHEMAS,
    check_forced_calls,
    check_parse_and_text_format,
    check_schema_answers,
    options,
)

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_answers_are_valid_streaming_or_not_and_reasoning_stays(client, name):
    check_schema_answers(client, name, options(MODEL))


def test_parse_with_a_pydantic_model_and_responses_text_format(client):
    check_parse_and_text_format(client, options(MODEL))


def test_forced_tool_calls_are_valid_calls_to_the_right_function(client):
    check_forced_calls(client, options(MODEL))


def test_logprobs_are_finite_and_ordered_and_n_gives_n_choices(client):
    done = client.chat.completions.create(
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=3,
        n=3,
        seed=7,
        **options(MODEL),
    )
    assert [c.index for c in done.choices] == [0, 1, 2]
    for choice in done.choices:
        entries = choice.logprobs.content
        raw = b"".join(bytes(e.bytes) for e in entries)  # a token may hold part of a character
        assert entries and raw.decode("utf-8", errors="replace") == choice.message.content
        for e in entries:
            ranked = [a.logprob for a in e.top_logprobs]
            assert math.isfinite(e.logprob) and ranked == sorted(ranked, reverse=True)
            assert len(ranked) == 3 and e.logprob <= ranked[0] + 1e-6
    assert done.usage.completion_tokens > sum(len(c.logprobs.content) for c in done.choices)
    legacy = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8, logprobs=2)
    assert all(math.isfinite(lp) for lp in legacy.choices[0].logprobs.token_logprobs)
