"""Faults on a local Ray cluster with the mock engine: a replica killed under 20 streams, and 50
clients leaving mid-stream. Nothing hangs, nothing is lost silently, capacity comes back."""

import json
import threading
import time

import httpx
import pytest
import ray
from ray import serve

from cluster.serve.local import APP_NAME
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
BODY = {"model": "gpt-oss-120b", "reasoning_effort": "high", "stream": True,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}]}  # fmt: skip


def running_engine_replicas() -> int:
    return (
        serve.status().applications[APP_NAME].deployments["engine"].replica_states.get("RUNNING", 0)
    )


def engine_actor_names() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "#engine#" in a["name"]]  # fmt: skip


def gauge_sum(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"ray_gpt_oss_{name}{{"))  # fmt: skip


def running_at_least(cluster, n: int):
    return lambda: gauge_sum(cluster.metrics_url, "engine_running_requests") >= n


def stream(
    url: str, outcomes: list, started: threading.Event | None = None, timeout: float = 120
) -> None:
    """One streamed request to its end; records ('done' | error code | 'http <status>', secs)."""
    t0 = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=timeout) as r:
            if r.status_code != 200:
                outcomes.append((f"http {r.status_code}", time.monotonic() - t0))
                return
            last = None
            for line in r.iter_lines():
                if started is not None:
                    started.set()
                if line.startswith("data: "):
                    last = line[6:] if line != "data: [DONE]" else last
            chunk = json.loads(last)
            error = chunk.get("error")
            finished = not error and chunk["choices"] and chunk["choices"][0].get("finish_reason")
            outcomes.append(("done" if finished else (error or {}).get("code"),
                             time.monotonic() - t0))  # fmt: skip
    except httpx.HTTPError as err:
        outcomes.append((f"transport {type(err).__name__}", time.monotonic() - t0))


def test_a_replica_killed_under_20_streams(cluster):
    assert running_engine_replicas() == 2
    outcomes: list = []
    started = threading.Event()
    threads = [threading.Thread(target=stream, args=(cluster.url, outcomes, started))
               for _ in range(20)]  # fmt: skip
    for t in threads:
        t.start()
    assert started.wait(30)
    # Every seat busy, tokens flowing (the metrics export lags by its report interval).
    wait_for(running_at_least(cluster, 16), 60, "both engines running 8 streams each")
    victim = engine_actor_names()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    kinds = [kind for kind, _ in outcomes]
    assert len(outcomes) == 20 and set(kinds) <= {"done", "engine_unavailable"}, kinds
    assert "engine_unavailable" in kinds  # the victim's streams were told, with a clear code
    assert all(seconds < 90 for _, seconds in outcomes)  # within the high-effort deadline
    # Serve replaces the replica; new requests run.
    deadline = time.monotonic() + 60
    while (running_engine_replicas() < 2 or victim in engine_actor_names()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert running_engine_replicas() == 2 and victim not in engine_actor_names()
    after: list = []
    threads = [threading.Thread(target=stream, args=(cluster.url, after)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [kind for kind, _ in after] == ["done"] * 4


def test_50_clients_leaving_mid_stream_free_the_engines(cluster):
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        streams = []
        for _ in range(50):
            request = http.build_request("POST", "/v1/chat/completions", json=BODY)
            response = http.send(request, stream=True)
            assert response.status_code == 200
            streams.append(response)
        lines = streams[0].iter_lines()
        assert next(lines).startswith("data: ")
        # 16 running, the rest waiting in the gateway's queue; the metrics export lags by its
        # report interval, and more under a loaded machine.
        wait_for(running_at_least(cluster, 1), 60, "the engines to report running requests")
        for response in streams:
            response.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = gauge_sum(cluster.metrics_url, "engine_running_requests")
        queued = gauge_sum(cluster.metrics_url, "router_queue_depth")
        if running == 0 and queued == 0:
            break
        time.sleep(1)
    assert running == 0 and queued == 0


def gateway_actor_names() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "#gateway#" in a["name"]]  # fmt: skip


def test_a_gateway_restart_loses_no_request_silently(cluster):
    """The gateway replica holding streams and a queue dies: every client learns it (a complete
    stream, an error event, an HTTP error or a broken connection: never a stream that just stops
    looking finished), Serve restarts the gateway, and service resumes."""
    outcomes: list = []
    threads = [threading.Thread(target=stream, args=(cluster.url, outcomes)) for _ in range(24)]
    for t in threads:
        t.start()
    # Every seat busy (16 streams through the gateway), the rest queued behind them.
    wait_for(running_at_least(cluster, 16), 60, "both engines running 8 streams each")
    (victim,) = gateway_actor_names()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert len(outcomes) == 24
    # Streams in flight break (incomplete chunked body), queued ones get the proxy's 5xx; none
    # ends as if it had finished (no stream that merely stops: `None` here).
    kinds = [kind for kind, _ in outcomes]
    assert all(k is not None and (k == "done" or k.startswith(("http 5", "transport")))
               for k in kinds), kinds  # fmt: skip
    assert any(k != "done" for k in kinds)
    # The engines notice their caller is gone and free the seats.
    wait_for(lambda: gauge_sum(cluster.metrics_url, "engine_running_requests") == 0, 30,
             "the engines to free the dead gateway's seats")  # fmt: skip
    wait_for(lambda: gateway_actor_names() and victim not in gateway_actor_names(), 60,
             "Serve to start a new gateway replica")  # fmt: skip
    # Service resumes once the proxy learns of the new replica (the proxy's 5xx until then); each
    # try is bounded, so a stream the new gateway never answers fails here with the tries so far.
    after: list = []
    deadline = time.monotonic() + 120
    while not (after and after[-1][0] == "done") and time.monotonic() < deadline:
        stream(cluster.url, after, timeout=30)
    assert after and after[-1][0] == "done", after
