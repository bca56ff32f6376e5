"""The whole path on a local Ray cluster: openai SDK -> Serve proxy -> gateway -> router -> mock."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from ray import serve

from cluster.contracts import LoadReport
from cluster.serve.local import APP_NAME
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
MODEL = "gpt-oss-120b"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_non_stream(client, effort):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, reasoning_effort=effort)
    message = r.choices[0].message
    assert message.reasoning and message.content
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_stream_adds_up_to_usage(client, harmony, effort):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        reasoning_effort=effort,
        stream=True,
        stream_options={"include_usage": True},
        seed=4,
    )
    reasoning, content, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning", None) or "")
            content.append(choice.delta.content or "")
    reasoning_text, content_text = "".join(reasoning), "".join(content)
    assert reasoning_text and content_text
    streamed = len(harmony.encode_text(reasoning_text)) + len(harmony.encode_text(content_text))
    # Every generated token is reasoning or content, except channel framing (< 12 tokens).
    assert 0 <= usage.completion_tokens - streamed <= 12
    assert (
        0
        <= usage.completion_tokens_details.reasoning_tokens
        - len(harmony.encode_text(reasoning_text))
        <= 2
    )


def test_completions_and_models(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10)
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == [MODEL]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"model": "nope"}, openai.NotFoundError),
        ({"reasoning_effort": "extreme"}, openai.BadRequestError),
        ({"max_tokens": 0}, openai.BadRequestError),
        ({"n": 9}, openai.BadRequestError),  # above gateway.max_choices
        ({"messages": [{"role": "robot", "content": "x"}]}, openai.BadRequestError),
    ],
)
def test_bad_inputs(client, kwargs, error):
    args = {"model": MODEL, "messages": QUESTION} | kwargs
    with pytest.raises(error) as caught:
        client.chat.completions.create(**args)
    assert caught.value.body["message"]


def test_http_errors_through_the_proxy(cluster):
    r = httpx.post(f"{cluster.url}/v1/chat/completions", content=b"{oops", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(f"{cluster.url}/v1/unknown", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{cluster.url}/ready", timeout=10).json() == {"status": "ready"}


def engine_load() -> LoadReport:
    handle = serve.get_deployment_handle("engine", app_name=APP_NAME)
    return LoadReport.from_dict(handle.record_routing_stats.remote().result())


def test_client_disconnect_stops_generation(cluster):
    body = {"model": MODEL, "messages": QUESTION, "reasoning_effort": "high", "stream": True}
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        streams = []
        for _ in range(4):
            response = http.send(
                http.build_request("POST", "/v1/chat/completions", json=body), stream=True
            )
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            streams.append((response, lines))  # keep the line iterator: dropping it closes
        assert engine_load().running == 4
        for response, _ in streams:
            response.close()
    deadline = time.monotonic() + 15
    while (load := engine_load()).running + load.waiting and time.monotonic() < deadline:
        time.sleep(0.2)
    assert load.running == 0 and load.waiting == 0 and load.kv_used_tokens == 0


def test_requests_wait_in_the_gateway_not_in_the_engine(cluster, client):
    """Late binding through Serve: the gateway's scheduler hands the engine only what its four
    seats can run, so nothing waits in the engine's own first-come queue for a seat. (A request
    that reaches a free seat between two engine steps counts as waiting until the next step: only
    waiting beside four running requests is queueing.)"""
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)

    # The engine's load report reaches the gateway's scheduler (/ready says so): until then the
    # gateway cannot bind late.
    def ready() -> bool:
        return httpx.get(f"{cluster.url}/ready", timeout=10).status_code == 200

    wait_for(ready, 30, "the engine's load report to reach the gateway")
    body = {"model": MODEL, "messages": QUESTION, "reasoning_effort": "high"}
    with ThreadPoolExecutor(10) as pool:
        replies = [
            pool.submit(httpx.post, f"{cluster.url}/v1/chat/completions", json=body, timeout=60)
            for _ in range(10)
        ]
        peak_running = peak_waiting = 0
        while not all(r.done() for r in replies):
            load = engine_load()
            peak_running = max(peak_running, load.running)
            if load.running >= load.max_num_seqs:
                peak_waiting = max(peak_waiting, load.waiting)
            time.sleep(0.05)
    outcomes = [(r.result().status_code, r.result().text) for r in replies]
    assert all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200]
    assert all(r.result().headers["x-reasoning-effort"] == "high" for r in replies)
    assert peak_running == 4 and peak_waiting == 0
