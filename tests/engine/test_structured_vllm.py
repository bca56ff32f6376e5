"""Structured outputs enforced by vLLM's grammar on a random-weight gpt-oss: a random model can
only write schema-valid JSON, or a valid call to the forced function, if enforcement works. The
reasoning budget is what makes it finish: random weights rarely end the analysis on their own."""

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
