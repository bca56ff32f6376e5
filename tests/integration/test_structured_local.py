"""Structured outputs, forced tool calls and the reasoning budget on a local cluster with the mock
engine (what `make serve` runs): the checks the engine tier runs against vLLM."""

import pytest

from tests.structured_cases import (
    SCHEMAS,
    check_forced_calls,
    check_parse_and_text_format,
    check_schema_answers,
    options,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-oss-120b"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_answers_are_valid_streaming_or_not(client, name):
    check_schema_answers(client, name, options(MODEL))


def test_parse_and_responses_text_format(client):
    check_parse_and_text_format(client, options(MODEL))


def test_forced_tool_calls(client):
    check_forced_calls(client, options(MODEL))
