"""The Responses API on a local cluster with two gateway replicas sharing a real Redis: follow-ups by
`previous_response_id` land on either gateway and all find their conversation; with Redis down,
stateful calls get a clear 503 and stateless ones still work."""

import os
import re
import subprocess
import time

import httpx
import openai
import pytest
import redis
from openai import OpenAI
from ray import serve

from cluster.serve.local import APP_NAME, free_port, local_cluster
from tests.helpers import fast_config, system_tool

pytestmark = pytest.mark.integration
MODEL = "gpt-oss-120b"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    binary = system_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(50):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield proc, port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(redis_server):
    _, port = redis_server
    config = fast_config(
        gateway={"port": free_port(), "replicas": {"min_replicas": 2, "max_replicas": 2}},
        responses={"store": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"},
    )
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    with local_cluster(config, metrics_port=free_port()) as running:
        yield running


def gateway_requests(metrics_url: str) -> dict[str, float]:
    """Requests each gateway replica served, from Ray Serve's own per-replica counter."""
    counts: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if (
            line.startswith("ray_serve_deployment_request_counter")
            and 'deployment="gateway"' in line
        ):
            replica = re.search(r'replica="([^"]+)"', line).group(1)
            counts[replica] = counts.get(replica, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_follow_ups_find_their_conversation_on_either_gateway(cluster):
    gateways = serve.status().applications[APP_NAME].deployments["gateway"]
    assert gateways.replica_states.get("RUNNING") == 2
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)
    for effort in ("low", "medium", "high"):
        first = client.responses.create(model=MODEL, input="Why is the sky blue?",
                                        reasoning={"effort": effort}, max_output_tokens=300)  # fmt: skip
        assert first.usage.output_tokens_details.reasoning_tokens > 0
    time.sleep(4)  # Ray's metrics export catches up
    before = gateway_requests(cluster.metrics_url)
    # Ten follow-ups spread over two gateways (in-process stores would lose about half).
    for _ in range(10):
        follow = client.responses.create(model=MODEL, input="And at sunset?",
                                         previous_response_id=first.id, max_output_tokens=100)  # fmt: skip
        assert follow.previous_response_id == first.id
        assert follow.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(first.id).id == first.id

    def both_took_follow_ups() -> bool:
        after = gateway_requests(cluster.metrics_url)
        return len(after) == 2 and all(n > before.get(r, 0.0) for r, n in after.items())

    deadline = time.monotonic() + 30  # the follow-ups did land on both gateways
    while not both_took_follow_ups() and time.monotonic() < deadline:
        time.sleep(1)
    assert both_took_follow_ups(), (before, gateway_requests(cluster.metrics_url))
    with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=100) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed",
                                                            "response.incomplete")  # fmt: skip
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_a_function_call_round_trip(cluster):
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "name": "get_weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]  # fmt: skip
    r = client.responses.create(model=MODEL, input="Call get_weather for Lisbon", tools=tools)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and "city" in call.arguments
    answer = client.responses.create(
        model=MODEL, previous_response_id=r.id, tools=tools, max_output_tokens=200,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 19}'}],
    )  # fmt: skip
    assert answer.status in ("completed", "incomplete") and answer.usage.input_tokens > 0


def test_with_redis_down_stateful_calls_fail_clearly(cluster, redis_server):
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)
    kept = client.responses.create(model=MODEL, input="Hi", max_output_tokens=50)
    proc, _ = redis_server
    proc.terminate()
    proc.wait(timeout=10)
    with pytest.raises(openai.InternalServerError) as err:
        client.responses.create(model=MODEL, input="x", previous_response_id=kept.id)
    assert err.value.status_code == 503 and err.value.body["code"] == "store_unavailable"
    stateless = client.responses.create(model=MODEL, input="Hi", store=False,
                                        max_output_tokens=50)  # fmt: skip
    assert stateless.status in ("completed", "incomplete")
