"""What the gateway records per request, and how the recorders turn it into metric samples."""

import re

import httpx
import pytest

from cluster.api.chat import ChatService
from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.api.generation import Caller, RequestRecord
from cluster.api.protocol import ChatCompletionRequest
from cluster.config import ClusterConfig
from cluster.contracts import Effort, LoadReport, Overloaded, SchedulingRequest
from cluster.engine.mock import MockEngine
from cluster.metrics import (
    SPECS,
    AutoscalerMetrics,
    EngineMetrics,
    GatewayMetrics,
    RouterMetrics,
    Spec,
)
from cluster.scheduling.autoscaling import Decision
from cluster.scheduling.queue import SchedulingQueue, Ticket
from tests.helpers import fast_config

MODEL = "gpt-oss-120b"


class FakeMetric:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.samples: list[tuple[str, float, dict]] = []

    def inc(self, value, tags=None):
        self.samples.append(("inc", value, tags or {}))

    def set(self, value, tags=None):
        self.samples.append(("set", value, tags or {}))

    def observe(self, value, tags=None):
        self.samples.append(("observe", value, tags or {}))


class Fakes(dict):
    def __call__(self, spec: Spec) -> FakeMetric:
        self[spec.name] = FakeMetric(spec)
        return self[spec.name]

    def values(self, name, **tags):
        return [v for _, v, t in self[name].samples if tags.items() <= t.items()]


def chat(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Why is the sky blue?"}]} | kw


@pytest.fixture
def engine(harmony):
    return MockEngine(fast_config(), harmony)


async def post(app, path, body):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        return await c.post(path, json=body)


async def test_a_streamed_chat_records_its_timeline_tokens_and_outcome(harmony, engine):
    records: list[RequestRecord] = []
    app = create_app(fast_config(), harmony, InProcessEngine(engine), records.append)
    body = chat(stream=True, reasoning_effort="medium", stream_options={"include_usage": True})
    r = await post(app, "/v1/chat/completions", body)
    assert r.status_code == 200
    usage = [line for line in r.text.splitlines() if '"usage"' in line][-1]
    (record,) = records
    assert record.endpoint == "chat" and record.outcome == "completed"
    assert record.effort is Effort.MEDIUM
    assert record.arrived_at <= record.admitted_at <= record.first_token_at
    assert record.first_token_at < record.first_answer_at <= record.finished_at  # reasoning first
    assert record.reasoning_tokens > 0
    assert f'"completion_tokens":{record.completion_tokens}' in usage
    assert f'"prompt_tokens":{record.prompt_tokens}' in usage
    assert record.token_gaps and all(g >= 0 for g in record.token_gaps)
    assert record.expected_output_tokens > 0


async def test_completions_and_rejections_are_recorded(harmony, engine):
    records: list[RequestRecord] = []
    app = create_app(fast_config(), harmony, InProcessEngine(engine), records.append)
    r = await post(app, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 8})
    assert r.status_code == 200
    assert records[-1].endpoint == "completions" and records[-1].outcome == "completed"
    assert records[-1].first_answer_at is None and records[-1].completion_tokens == 8

    class Full(InProcessEngine):
        async def admit(self, *args):
            raise Overloaded(retry_after_s=2)

    app = create_app(fast_config(), harmony, Full(engine), records.append)
    assert (await post(app, "/v1/chat/completions", chat())).status_code == 429
    assert records[-1].outcome == "rejected" and records[-1].first_token_at is None


async def test_a_client_that_leaves_mid_stream_is_recorded_as_cancelled(harmony, engine):
    records: list[RequestRecord] = []
    service = ChatService(fast_config(), harmony, InProcessEngine(engine))
    body = ChatCompletionRequest.model_validate(chat(stream=True, reasoning_effort="high"))
    stream, _ = await service.create(body, Caller("t", None, (records.append,)))
    await anext(stream.events)
    await anext(stream.events)
    await stream.events.aclose()
    assert [r.outcome for r in records] == ["cancelled"]
    assert engine.load_report().running == 0
    await stream.close()  # the response's background task: nothing more to do
    assert len(records) == 1


async def test_a_stream_never_read_is_freed_by_its_close(harmony, engine):
    """A client gone between the first engine output and the first SSE write: the generators
    never start, so the response's background `close` frees the engine and the seat."""
    records: list[RequestRecord] = []
    service = ChatService(fast_config(), harmony, InProcessEngine(engine))
    body = ChatCompletionRequest.model_validate(chat(stream=True, reasoning_effort="high"))
    stream, _ = await service.create(body, Caller("t", None, (records.append,)))
    assert engine.load_report().running == 1
    await stream.close()
    assert engine.load_report().running == 0 and [r.outcome for r in records] == ["cancelled"]


def record(**kw) -> RequestRecord:
    base = {"endpoint": "chat", "effort": Effort.LOW, "key": None, "outcome": "completed", "arrived_at": 100.0,
                "admitted_at": 100.2, "first_token_at": 100.5, "first_answer_at": 101.0,
                "finished_at": 102.5, "token_gaps": (0.02, 0.03), "prompt_tokens": 50,
                "cached_tokens": 32, "reasoning_tokens": 40, "completion_tokens": 101, "expected_output_tokens": 202}  # fmt: skip
    return RequestRecord(**(base | kw))


def test_gateway_metrics_from_a_record():
    config, fakes = ClusterConfig(), Fakes()
    metrics = GatewayMetrics(config.efforts, fakes)
    metrics.record(record())
    low = {"effort": "low"}
    assert fakes.values("gpt_oss_time_to_first_token_seconds", **low) == [0.5]
    assert fakes.values("gpt_oss_time_to_first_answer_token_seconds", **low) == [1.0]
    assert fakes.values("gpt_oss_queue_wait_seconds", **low) == [pytest.approx(0.2)]
    assert fakes.values("gpt_oss_inter_token_latency_seconds") == [0.02, 0.03]
    assert fakes.values("gpt_oss_request_duration_seconds", outcome="completed") == [2.5]
    assert fakes.values("gpt_oss_requests_total", endpoint="chat", outcome="completed") == [1]
    assert fakes.values("gpt_oss_tokens_total", kind="reasoning") == [40]
    assert fakes.values("gpt_oss_tokens_total", kind="prompt") == [50]
    assert fakes.values("gpt_oss_tokens_total", kind="cached") == [32]
    assert fakes.values("gpt_oss_cost_prediction_ratio") == [0.5]
    assert fakes.values("gpt_oss_slo_requests_total", met="true") == [1]
    # A TTFT beyond the low-effort SLO is a miss; a cancelled request is no SLO sample at all.
    slow = config.efforts[Effort.LOW].ttft_slo_s + 1
    metrics.record(record(first_token_at=100 + slow, first_answer_at=None, finished_at=200.0))
    assert fakes.values("gpt_oss_slo_requests_total", met="false") == [1]
    assert len(fakes.values("gpt_oss_time_to_first_answer_token_seconds")) == 1
    metrics.record(record(outcome="cancelled"))  # no SLO sample
    metrics.record(record(outcome="rejected", admitted_at=None, first_token_at=None))
    assert fakes.values("gpt_oss_slo_requests_total", met="false") == [1, 1]  # shed: a miss


def test_router_engine_and_autoscaler_metrics():
    fakes = Fakes()
    router = RouterMetrics(fakes)
    router.admitted(Effort.LOW, degraded_from=Effort.HIGH)
    router.rejected(Effort.HIGH)
    assert fakes.values("gpt_oss_router_degraded_total", from_effort="high", to_effort="low")
    assert fakes.values("gpt_oss_router_rejected_total", effort="high") == [1]

    class Scheduler:  # what RouterMetrics reads
        queue = SchedulingQueue()
        offered = type("Rate", (), {"rate": staticmethod(lambda now: 100.0)})()

        def queued_tokens(self):
            return self.queue.queued_tokens

    scheduler = Scheduler()
    for i, effort in enumerate([Effort.HIGH, Effort.HIGH, Effort.LOW]):
        scheduler.queue.push(Ticket(SchedulingRequest(f"r{i}", effort, 500, 1000), 500, 0.0, 10.0))
    router.queue(scheduler, 0.0, horizon_s=60)
    assert fakes.values("gpt_oss_router_queue_depth", effort="high") == [2]
    assert fakes.values("gpt_oss_router_queue_depth", effort="medium") == [0]
    assert fakes.values("gpt_oss_router_projected_backlog_tokens") == [100 * 60 + 3_000]

    engine = EngineMetrics("replica-a", fakes)
    engine.record(LoadReport(3, 1, 500, 2_000, 9_000, 8, 0.0))
    assert fakes.values("gpt_oss_engine_kv_cache_usage_ratio", replica="replica-a") == [0.25]

    autoscaler = AutoscalerMetrics(fakes)
    autoscaler.record("engine", Decision(4, "slo", 3.2), current=3, maximum=8)
    reasons = {t["reason"]: v for _, v, t in fakes["gpt_oss_autoscaler_decision"].samples}
    assert reasons["slo"] == 1 and sum(reasons.values()) == 1


def test_metric_names_follow_prometheus_conventions():
    names = [s.name for s in SPECS]
    assert len(set(names)) == len(names)
    for spec in SPECS:
        assert re.fullmatch(r"gpt_oss_[a-z_]+", spec.name)
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith(("_seconds", "_ratio")), spec.name
            assert list(spec.buckets) == sorted(spec.buckets)
        assert "le" not in spec.labels and spec.help.endswith(".")
