"""Property-based fuzzing of the gateway's OpenAPI schema (schemathesis + hypothesis): thousands of
generated requests, valid and not, against the app with a mock engine. No 5xx, ever, and every
error body in OpenAI's shape."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.engine.mock import MockEngine
from cluster.harmony import Harmony
from tests.helpers import fast_config

CAP = {"max_tokens": 64, "default_max_tokens": 32}  # keep generated work small, not the inputs
CONFIG = fast_config(1e-4, efforts={"low": CAP, "medium": CAP, "high": CAP})
HARMONY = Harmony(CONFIG.harmony.vocab_dir, CONFIG.harmony.conversation_start_date)
APP = create_app(CONFIG, HARMONY, InProcessEngine(MockEngine(CONFIG, HARMONY)))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.hook
def map_body(context, body):
    """Name the served model in most bodies, so generation goes past the 404 into the engine."""
    if isinstance(body, dict) and "model" in body and len(str(body["model"])) % 4:
        return body | {"model": "gpt-oss-120b"}
    return body


SEEN: dict[int, int] = {}


def openai_error_shape(ctx, response, case):
    """Every 4xx is an OpenAI error object with a message."""
    SEEN[response.status_code] = SEEN.get(response.status_code, 0) + 1
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]


@pytest.fixture(scope="module", autouse=True)
def enough_requests():
    """Fuzzing is only as good as its volume: report it, and insist on thousands."""
    yield
    print(f"\nfuzzed requests by status: {dict(sorted(SEEN.items()))}")
    assert sum(SEEN.values()) >= 2_000, SEEN


@schema.parametrize()
@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_no_generated_request_gets_a_5xx(case):
    case.call_and_validate(checks=[not_a_server_error, openai_error_shape])
