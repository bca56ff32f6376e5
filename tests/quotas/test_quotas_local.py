"""Per-key limits hold across gateway replicas: two gateways share usage through the quota ledger,
so a key allowed 4 requests a minute gets about 4 through the cluster, not 4 per gateway."""

import time

import httpx
import pytest
import ray
from ray import serve

from cluster.serve.local import APP_NAME, free_port, local_cluster
from tests.helpers import fast_config

pytestmark = pytest.mark.integration
KEY = "sk-quota-test-key"
BODY = {"model": "gpt-oss-120b", "reasoning_effort": "low", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    config = fast_config(
        gateway={"port": free_port(), "replicas": {"min_replicas": 2, "max_replicas": 2}},
        auth={"api_keys": [{"name": "team-a", "key": KEY, "requests_per_minute": 4}],
              "quota_sync_s": 0.2},
    )  # fmt: skip
    with local_cluster(config) as running:
        yield running


def test_a_keys_limit_holds_across_two_gateway_replicas(cluster):
    gateways = serve.status().applications[APP_NAME].deployments["gateway"]
    assert gateways.replica_states.get("RUNNING") == 2
    statuses = []
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        for _ in range(12):
            r = http.post("/v1/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert "team-a" in r.json()["error"]["message"]
            time.sleep(0.5)  # more than a sync period between requests
    ledgers = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("gpt-oss-quota-ledger")]  # fmt: skip
    assert ledgers, "the gateways share no ledger"
    assert statuses.count(200) == 4 and statuses.count(429) == 8, statuses
