"""openai SDK -> gateway -> router -> vLLM AsyncLLM (CPU build, TP=1) on a tiny random gpt-oss.

The weights are random, so the text is gibberish; these tests hold the engine to the contract
(token ids in and out, sampling, usage, abort, load reports), while channel parsing is proven with
the mock and recorded token sequences in the unit tests.
"""

import json
import time
from functools import partial

import httpx
import pytest
import ray
from ray import serve

from cluster.contracts import LoadReport
from cluster.serve.local import APP_NAME, DeploymentFailed, deploy, undeploy
from tests.engine.conftest import MODEL, vllm_cpu_config
from tests.helpers import gauge_sum, wait_for

pytestmark = pytest.mark.engine
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_non_stream_and_stream_agree_for_a_seed(client, effort):
    kwargs = {"model": MODEL, "messages": HI, "reasoning_effort": effort, "seed": 7}
    full = client.chat.completions.create(max_tokens=24, **kwargs)
    assert full.usage.completion_tokens == 24 or full.choices[0].finish_reason != "length"
    assert full.usage.prompt_tokens > 40  # the harmony system message with the effort

    stream = client.chat.completions.create(
        max_tokens=24, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    chunks = list(stream)
    assert chunks[-1].usage == full.usage
    text = "".join(
        (c.choices[0].delta.content or "") + (getattr(c.choices[0].delta, "reasoning", "") or "")
        for c in chunks
        if c.choices
    )
    message = full.choices[0].message
    assert text == (message.content or "") + (getattr(message, "reasoning", None) or "")


def test_effort_changes_the_prompt(client):
    def prompt_tokens(effort):
        r = client.chat.completions.create(
            model=MODEL, messages=HI, reasoning_effort=effort, max_tokens=1
        )
        return r.usage.prompt_tokens

    assert prompt_tokens("low") == prompt_tokens("high")  # one token: the effort word


def test_completions_with_token_ids(client):
    r = client.completions.create(model=MODEL, prompt=[200006, 1428, 200008], max_tokens=16, seed=3)
    assert r.usage.prompt_tokens == 3
    assert 1 <= r.usage.completion_tokens <= 16


def engine_load() -> LoadReport:
    handle = serve.get_deployment_handle("engine", app_name=APP_NAME)
    return LoadReport.from_dict(handle.record_routing_stats.remote().result())


def test_disconnect_aborts_in_vllm(vllm_cluster):
    body = {"model": MODEL, "messages": HI, "max_tokens": 3000, "stream": True}
    with httpx.Client(base_url=vllm_cluster.url, timeout=60) as http:
        streams = []
        for _ in range(3):
            request = http.build_request("POST", "/v1/chat/completions", json=body)
            response = http.send(request, stream=True)
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            streams.append((response, lines))
        deadline = time.monotonic() + 10
        while engine_load().running < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine_load().running == 3  # vLLM's scheduler stats, through Serve routing stats
        for response, _ in streams:
            response.close()
    deadline = time.monotonic() + 20
    while (load := engine_load()).running + load.waiting and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (load.running, load.waiting) == (0, 0)
    assert load.kv_capacity_tokens > 0


def test_start_up_fails_clearly_on_a_bad_weights_path(vllm_cluster, tmp_path):
    bad = vllm_cpu_config(str(tmp_path / "missing"), vllm_cluster.config.gateway.port)
    with pytest.raises(DeploymentFailed, match="holds no model on this node"):
        deploy(bad, "bad-path", "/bad")
    undeploy("bad-path")


def test_a_reply_whose_vllm_replica_is_killed_moves_and_completes(vllm_cluster):
    """Killed mid-reply, the only replica comes back (Serve starts another) and vLLM continues the
    reply from its prompt and tokens so far (the continuation waits for it, ahead of new
    arrivals): the client reads one unbroken stream, usage counting each token once."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 2_000, "stream": True, "seed": 1,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with (
        httpx.Client(base_url=vllm_cluster.url, timeout=300) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        before = [next(lines) for _ in range(2)]  # its first tokens: mid-reply
        (victim,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "#engine#" in a["name"]]  # fmt: skip
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        after = [line for line in lines if line]
    events = [json.loads(line[6:]) for line in before + after if line.startswith("data: {")]
    assert after[-1] == "data: [DONE]" and not any("error" in e for e in events), after[-3:]
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finish in (["length"], ["stop"]), finish
    usage = events[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 2_000
    # The gateway moved it (a reply that had ended before the kill would not count); Ray's
    # metrics export lags.
    moved = partial(gauge_sum, vllm_cluster.metrics_url, "migrations_total", 'cause="failure"')
    wait_for(lambda: moved() >= 1, 60, "the gateway to count the move")
