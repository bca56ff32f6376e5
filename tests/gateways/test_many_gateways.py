"""Three gateway replicas, each its own scheduler and queue, place on two engine replicas from
load reports up to a period old: under a burst the queue stays in the gateways, where the order
is ours, and no engine holds a request beside a full batch (its first-come queue), as the
cluster's own metrics say. Engines refuse what they have no seat for (`router.engine_refuses`)
and the refused request queues again in its gateway."""

import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from cluster.serve.local import APP_NAME, free_port, local_cluster
from tests.helpers import fast_config, wait_for

pytestmark = pytest.mark.integration
SEATS, BURST = 4, 40
BODY = {"model": "gpt-oss-120b", "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "Plan the week."}]}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    config = fast_config(
        0.05,
        gateway={"port": free_port(), "replicas": {"min_replicas": 3, "max_replicas": 3}},
        engine_replicas={"min_replicas": 2, "max_replicas": 2},
        engine={"mock": {"max_num_seqs": SEATS}},
        # Long and steady replies (~2 s each, 20x an H100's pace): five rounds of seats.
        efforts={"high": {"output_tokens": {"median_tokens": 12_000, "sigma": 0.3}}},
        router={"admission_slack": 100.0},  # queueing is under test, not shedding
    )
    previous = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "500"  # a sample every half second
    try:
        with local_cluster(config, metrics_port=free_port()) as running:
            yield running
    finally:
        if previous is None:
            os.environ.pop("RAY_metrics_report_interval_ms")
        else:
            os.environ["RAY_metrics_report_interval_ms"] = previous


def sample(url: str) -> tuple[float, dict[str, tuple[float, float, float]]]:
    """The gateways' queue depth (all of them, every effort) and each engine replica's
    (running, waiting, seats), as Ray exports them."""
    queued, engines = 0.0, defaultdict(lambda: [0.0, 0.0, 0.0])
    field = {"ray_gpt_oss_engine_running_requests": 0, "ray_gpt_oss_engine_waiting_requests": 1,
             "ray_gpt_oss_engine_max_num_seqs": 2}  # Ray prefixes its exports  # fmt: skip
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            if s.name == "ray_gpt_oss_router_queue_depth":
                queued += s.value
            elif s.name in field:
                engines[s.labels["replica"]][field[s.name]] = s.value
    return queued, {r: tuple(v) for r, v in engines.items()}


def test_a_burst_queues_in_the_gateways_never_in_an_engine(cluster):
    deployments = serve.status().applications[APP_NAME].deployments
    assert deployments["gateway"].replica_states.get("RUNNING") == 3
    assert deployments["engine"].replica_states.get("RUNNING") == 2
    wait_for(lambda: len(sample(cluster.metrics_url)[1]) == 2, 60, "both engines' metrics")
    with ThreadPoolExecutor(BURST) as pool:
        replies = [
            pool.submit(httpx.post, f"{cluster.url}/v1/chat/completions", json=BODY, timeout=120)
            for _ in range(BURST)
        ]
        samples = []
        while not all(r.done() for r in replies):
            samples.append(sample(cluster.metrics_url))
            time.sleep(0.2)
    statuses = [r.result().status_code for r in replies]
    assert statuses == [200] * BURST, [
        r.result().text for r in replies if not r.result().is_success
    ]
    busy = [(q, e) for q, e in samples if q > 0]
    assert len(busy) >= 3, f"the gateways hardly queued: {samples}"
    # Waiting beside a full batch is queueing in the engine; a request that took a free seat
    # between two steps waits only until the next step, with the batch not full.
    overflow = [
        (q, e) for q, e in busy if any(w > 0 and r + w > seats for r, w, seats in e.values())
    ]
    assert not overflow, overflow
    full = [e for _, e in busy if any(r >= seats for r, _, seats in e.values())]
    assert full, f"no engine filled its seats while the gateways queued: {busy}"
