"""A real Prometheus (the Debian package) scrapes the running local cluster through Ray's metrics
export, with the product's alert rules loaded: after a few requests, TTFT by effort, queue depth
and backlog are queryable, and every rule evaluates without error on live data."""

import subprocess
import time

import httpx
import pytest
import yaml

from cluster.serve.local import free_port
from tests.helpers import system_tool
from tests.ops.test_ops import RULES

pytestmark = pytest.mark.integration


@pytest.fixture
def prometheus(cluster, tmp_path):
    binary = system_tool("prometheus")
    target = cluster.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(api: httpx.Client, promql: str) -> list[dict]:
    try:
        reply = api.get("/api/v1/query", params={"query": promql}).json()
    except httpx.TransportError:  # still starting
        return []
    return reply["data"]["result"] if reply.get("status") == "success" else []


def wait_for(api: httpx.Client, promql: str, ok, timeout_s: float = 90, between=None) -> list[dict]:
    """Poll until `ok(result)`; `between` runs before each poll after the first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(api, promql)
        if ok(result):
            return result
        time.sleep(1)
        if between is not None:
            between()
    pytest.fail(f"no good answer to {promql} in {timeout_s:.0f} s; last: {result}")


def test_prometheus_scrapes_the_cluster_and_runs_the_rules(cluster, client, prometheus):
    def requests() -> None:
        for effort, max_tokens in (("low", None), ("medium", 64), ("high", 64)):  # low: answers
            client.chat.completions.create(
                model="gpt-oss-120b", reasoning_effort=effort, max_tokens=max_tokens,
                messages=[{"role": "user", "content": "Why is the sky blue?"}],
            )  # fmt: skip

    requests()
    by_effort = wait_for(
        prometheus,
        "sum by (effort) (ray_gpt_oss_time_to_first_token_seconds_count)",
        lambda r: {s["metric"].get("effort") for s in r} >= {"low", "medium", "high"},
    )
    assert all(float(s["value"][1]) >= 1 for s in by_effort)
    depth = wait_for(prometheus, "sum by (effort) (ray_gpt_oss_router_queue_depth)",
                     lambda r: len(r) == 3)  # fmt: skip
    assert {s["metric"]["effort"] for s in depth} == {"low", "medium", "high"}
    backlog = wait_for(prometheus, "sum(ray_gpt_oss_router_projected_backlog_tokens)", bool)
    assert float(backlog[0]["value"][1]) >= 0
    for promql in ("ray_gpt_oss_time_to_first_answer_token_seconds_count",
                   "ray_gpt_oss_slo_requests_total", "ray_gpt_oss_tokens_total",
                   "ray_gpt_oss_engine_kv_cache_usage_ratio",
                   "ray_serve_deployment_replica_starts_total",
                   "ray_serve_deployment_replica_healthy"):  # fmt: skip
        wait_for(prometheus, promql, bool, timeout_s=60)
    # The alert and recording rules load and evaluate on the live series.
    groups = wait_for_rules(prometheus)
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # Counters that move between scrapes: rates, and the SLO error ratio, exist. Requests keep
    # coming until they do (a first request that missed its SLO and a second that met it move
    # two different series, neither of which has a rate yet).
    ratio = wait_for(prometheus, "gpt_oss:slo_errors:ratio_rate5m",
                     lambda r: len(r) == 3 and "NaN" not in {s["value"][1] for s in r},
                     between=requests)  # fmt: skip
    assert all(0 <= float(s["value"][1]) <= 1 for s in ratio), ratio


def wait_for_rules(api: httpx.Client, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = api.get("/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            return groups
        time.sleep(1)
    pytest.fail("the rules were not evaluated")
