"""API keys and per-key quotas: no key, wrong key, revoked key, over quota; and the key material
never reaches logs, tenants or metrics."""

import hashlib
import logging

import httpx
import pytest

from cluster.api.auth import KeyRing, KeyUsage, Quotas
from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.api.generation import RequestRecord
from cluster.config import ApiKey
from cluster.engine.mock import MockEngine
from cluster.serve.quota_ledger import STALE_S, QuotaLedger
from tests.helpers import fast_config

SECRET = "sk-very-secret-0123456789"
BODY = {"model": "gpt-oss-120b", "reasoning_effort": "low", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}]}  # fmt: skip


def key(**kw) -> ApiKey:
    return ApiKey(**({"name": "team-a", "key": SECRET} | kw))


def test_keys_are_known_by_digest_and_name():
    digest = hashlib.sha256(b"other-key").hexdigest()
    ring = KeyRing([key(), ApiKey(name="team-b", sha256=digest, revoked=True)])
    assert ring.identify(SECRET).name == "team-a"
    assert ring.identify("other-key").revoked
    assert ring.identify("sk-very-secret-012345678") is None  # a prefix is no key
    assert not ring.open and KeyRing([]).open
    with pytest.raises(ValueError, match="exactly one of key and sha256"):
        ApiKey(name="x")


def test_requests_per_minute_slide_and_say_when_to_retry():
    quotas, team = Quotas(), KeyRing([key(requests_per_minute=2)]).identify(SECRET)
    assert quotas.acquire(team, 0.0) is None
    quotas.release("team-a", 10, 1.0)
    assert quotas.acquire(team, 20.0) is None
    quotas.release("team-a", 10, 21.0)
    refusal = quotas.acquire(team, 30.0)
    assert refusal.reason == "requests_per_minute" and refusal.retry_after_s == 30
    assert quotas.acquire(team, 60.5) is None  # the first request left the window


def test_tokens_per_minute_and_concurrency():
    quotas = Quotas()
    team = KeyRing([key(tokens_per_minute=1_000, max_concurrent=2)]).identify(SECRET)
    assert quotas.acquire(team, 0.0) is None and quotas.acquire(team, 0.0) is None
    assert quotas.acquire(team, 0.0).reason == "max_concurrent"
    quotas.release("team-a", 600, 5.0)
    quotas.release("team-a", 600, 10.0)
    refusal = quotas.acquire(team, 20.0)  # 1,200 tokens charged in the last minute
    assert refusal.reason == "tokens_per_minute" and refusal.retry_after_s == 45  # at 65 s
    assert quotas.acquire(team, 66.0) is None


@pytest.fixture
def app_with_keys(harmony):
    records: list[RequestRecord] = []
    config = fast_config(auth={"api_keys": [
        {"name": "team-a", "key": SECRET, "requests_per_minute": 2},
        {"name": "team-old", "sha256": hashlib.sha256(b"old-key").hexdigest(), "revoked": True},
    ]})  # fmt: skip
    app = create_app(config, harmony, InProcessEngine(MockEngine(config, harmony)),
                     records.append)  # fmt: skip
    return app, records


async def test_no_key_wrong_key_revoked_key_and_over_quota(app_with_keys, caplog):
    app, records = app_with_keys
    caplog.set_level(logging.DEBUG)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:

        async def post(token=None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await c.post("/v1/chat/completions", json=BODY, headers=headers)

        missing, wrong, revoked = await post(), await post("sk-wrong"), await post("old-key")
        assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
        assert (revoked.status_code, revoked.json()["error"]["code"]) == (403, "api_key_revoked")
        for r in (missing, wrong, revoked):
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert (await post(SECRET)).status_code == 200
        assert (await post(SECRET)).status_code == 200
        over = await post(SECRET)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert "team-a" in over.json()["error"]["message"]
    # Known by name everywhere: tenants, metrics records, logs.
    assert [(r.key, r.outcome) for r in records] == [
        ("team-a", "completed"), ("team-a", "completed"), ("team-a", "quota")]  # fmt: skip
    assert all(SECRET not in repr(r) for r in records)
    assert SECRET not in caplog.text and "old-key" not in caplog.text


async def test_open_mode_says_so_at_start(harmony, caplog):
    config = fast_config()
    with caplog.at_level(logging.WARNING):
        create_app(config, harmony, InProcessEngine(MockEngine(config, harmony)))
    assert "OPEN mode" in caplog.text


def test_limits_count_what_the_other_gateway_replicas_report():
    quotas = Quotas()
    team = KeyRing([key(requests_per_minute=4, max_concurrent=3)]).identify(SECRET)
    quotas.elsewhere({"team-a": KeyUsage(requests=3, tokens=500, in_flight=1)})
    assert quotas.acquire(team, 0.0) is None  # 3 requests elsewhere + this one = 4
    refusal = quotas.acquire(team, 1.0)  # in flight 1 + 1 < 3, but 5 requests > 4 a minute
    assert refusal.reason == "requests_per_minute" and refusal.retry_after_s == 15  # 1/4 window
    quotas.elsewhere({"team-a": KeyUsage(requests=0, tokens=0, in_flight=2)})
    assert quotas.acquire(team, 2.0).reason == "max_concurrent"  # 2 elsewhere + 1 here


def test_the_ledger_sums_the_other_live_replicas():
    ledger = QuotaLedger()
    assert ledger.sync("a", {"k": KeyUsage(2, 100, 1)}, now=0.0) == {}
    assert ledger.sync("b", {"k": KeyUsage(1, 50, 0)}, now=1.0) == {"k": KeyUsage(2, 100, 1)}
    ledger.sync("c", {"k": KeyUsage(5, 0, 2), "j": KeyUsage(1, 1, 1)}, now=2.0)
    assert ledger.sync("a", {"k": KeyUsage(0, 0, 0)}, now=3.0) == {
        "k": KeyUsage(6, 50, 2), "j": KeyUsage(1, 1, 1)}  # fmt: skip
    # b falls silent (died, scaled away): after STALE_S it no longer counts
    assert ledger.sync("a", {}, now=1.0 + STALE_S + 0.5) == {
        "k": KeyUsage(5, 0, 2), "j": KeyUsage(1, 1, 1)}  # fmt: skip
