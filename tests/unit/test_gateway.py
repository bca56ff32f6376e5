"""The gateway's HTTP behaviour in-process (FastAPI app + mock engine, no Ray)."""

import json
import math

import httpx
import pytest

from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.api.stops import StopMatcher
from cluster.contracts import Admission, Effort, EngineOutput, LoadReport, Overloaded
from cluster.engine.mock import MockEngine
from cluster.harmony import Turn
from tests.helpers import fast_config, shared_prefix

MODEL = "gpt-oss-120b"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.fixture
def engine(harmony):
    return MockEngine(fast_config(), harmony)


@pytest.fixture
async def client(harmony, engine):
    async with client_for(create_app(fast_config(), harmony, InProcessEngine(engine))) as c:
        yield c


def chat(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Why is the sky blue?"}]} | kw


def sse_chunks(text: str) -> list[dict]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_chat_stream_and_non_stream_agree(client, effort):
    body = chat(reasoning_effort=effort, seed=11)
    full = (await client.post("/v1/chat/completions", json=body)).json()
    message = full["choices"][0]["message"]
    assert message["reasoning"] and message["content"]
    assert full["choices"][0]["finish_reason"] == "stop"
    usage = full["usage"]
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] < usage["completion_tokens"]

    stream = await client.post(
        "/v1/chat/completions",
        json=body | {"stream": True, "stream_options": {"include_usage": True}},
    )
    assert stream.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(stream.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == message["reasoning"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    streamed = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    # The same prompt again: the engine's prefix cache holds all of it but the partial block.
    cold, warm = usage.pop("prompt_tokens_details"), streamed.pop("prompt_tokens_details")
    assert streamed == usage and cold["cached_tokens"] == 0
    assert warm["cached_tokens"] == (usage["prompt_tokens"] - 1) // 16 * 16


async def test_effort_scales_output(client):
    async def tokens(effort):
        total = 0
        for seed in range(8):
            r = await client.post(
                "/v1/chat/completions", json=chat(reasoning_effort=effort, seed=seed)
            )
            total += r.json()["usage"]["completion_tokens"]
        return total

    assert await tokens("high") > 5 * await tokens("low")


async def test_max_tokens_and_max_completion_tokens(client):
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert r.json()["usage"]["completion_tokens"] == 5
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = await client.post("/v1/chat/completions", json=chat(max_completion_tokens=9))
    assert r.json()["usage"]["completion_tokens"] == 9


async def test_stop_string_cuts_the_answer(client):
    base = (await client.post("/v1/chat/completions", json=chat(seed=5))).json()
    content = base["choices"][0]["message"]["content"]
    word = content.split()[3]
    cut = (await client.post("/v1/chat/completions", json=chat(seed=5, stop=[word]))).json()
    assert cut["choices"][0]["message"]["content"] == content[: content.index(word)]
    assert cut["choices"][0]["finish_reason"] == "stop"


async def test_tool_call_non_stream_and_stream(client):
    body = chat(
        messages=[{"role": "user", "content": "Call get_weather for Paris"}],
        tools=[WEATHER],
        tool_choice="auto",
    )
    r = (await client.post("/v1/chat/completions", json=body)).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])

    chunks = sse_chunks(
        (await client.post("/v1/chat/completions", json=body | {"stream": True})).text
    )
    calls = [
        d["tool_calls"][0] for c in chunks for d in [c["choices"][0]["delta"]] if "tool_calls" in d
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls))["city"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # The round trip: the tool result goes back and the model answers.
    follow = chat(
        messages=body["messages"]
        + [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "21C"}],
        tools=[WEATHER],
    )
    r = await client.post("/v1/chat/completions", json=follow)
    assert r.status_code == 200


async def test_completions(client):
    r = (
        await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "Once", "max_tokens": 12}
        )
    ).json()
    assert r["object"] == "text_completion" and r["usage"]["completion_tokens"] == 12
    assert r["choices"][0]["text"]
    r = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4, "stream": True},
    )
    chunks = sse_chunks(r.text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_models_health_ready(client):
    models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).json() == {"status": "ready"}


BAD = [
    ("/v1/chat/completions", chat(model="gpt-5"), 404, "model", "model_not_found"),
    ("/v1/chat/completions", chat(reasoning_effort="max"), 400, "reasoning_effort", None),
    ("/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens", None),
    ("/v1/chat/completions", chat(max_tokens=10**6), 400, "max_tokens", None),
    ("/v1/chat/completions", chat(n=9), 400, "n", None),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "n": 9}, 400, "n", None),
    ("/v1/chat/completions", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    ("/v1/chat/completions", chat(top_logprobs=2), 400, None, None),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "logprobs": 6}, 400, "logprobs", None),
    ("/v1/chat/completions", chat(messages=[]), 400, "messages", None),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "messages.0.role",
        None,
    ),
    ("/v1/chat/completions", chat(messages=[{"role": "user"}]), 400, "messages.0", None),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "tool", "content": "x", "tool_call_id": "nope"}]),
        400,
        "messages.0.tool_call_id",
        None,
    ),
    ("/v1/chat/completions", chat(temperature=3), 400, "temperature", None),
    ("/v1/chat/completions", chat(stop=["a"] * 5), 400, "stop", None),
    ("/v1/chat/completions", chat(stream_options={"include_usage": True}), 400, None, None),
    ("/v1/chat/completions", {"messages": []}, 400, "model", None),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", None),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "echo": True}, 400, "echo", None),
    ("/v1/completions", {"model": MODEL, "prompt": [300000]}, 400, "prompt", None),
    (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi " * 140_000},
        400,
        "prompt",
        "context_length_exceeded",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD)
async def test_bad_requests_get_openai_errors(client, path, body, status, param, code):
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code:
        assert error["code"] == code


async def test_malformed_and_oversized_bodies(harmony, engine):
    app = create_app(
        fast_config(gateway={"max_request_body_bytes": 1000}), harmony, InProcessEngine(engine)
    )
    async with client_for(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await c.post("/v1/chat/completions", json=[1, 2])
        assert r.status_code == 400
        r = await c.post(
            "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": "x" * 2000}])
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def chunked():
            for _ in range(5):
                yield b"x" * 400

        r = await c.post("/v1/chat/completions", content=chunked())
        assert r.status_code == 413
        r = await c.get("/v2/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and "error" in r.json()


async def test_api_keys(harmony, engine):
    app = create_app(
        fast_config(auth={"api_keys": ["k-1", "k-2"]}), harmony, InProcessEngine(engine)
    )
    async with client_for(app) as c:
        assert (await c.get("/v1/models")).status_code == 401
        bad = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert (
            await c.get("/v1/models", headers={"Authorization": "Bearer k-2"})
        ).status_code == 200
        assert (await c.get("/health")).status_code == 200


class _Full(InProcessEngine):
    """The scheduler sheds every request."""

    async def admit(self, request, degradable):
        raise Overloaded(retry_after_s=3)

    async def ready(self):
        return False


async def test_router_overload_is_429_with_retry_after(harmony, engine):
    async with client_for(create_app(fast_config(), harmony, _Full(engine))) as c:
        r = await c.post("/v1/chat/completions", json=chat(stream=True))
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await c.get("/ready")).status_code == 503


def test_stop_matcher_across_deltas():
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == "abc"
    assert m.feed("O") == " "  # only what could still start "STOP" is held back
    assert m.feed("P and more") == "" and m.stopped
    assert m.flush() == ""
    m = StopMatcher(["xyz"])
    assert m.feed("ab") + m.feed("cx") + m.flush() == "abcx"


class _Recorder(InProcessEngine):
    """Records what reaches the engine and what the scheduler hears back; lowers high effort
    to low at admission when `degrade` is set."""

    def __init__(self, engine, degrade=False):
        super().__init__(engine)
        self.degrade, self.requests, self.admitted, self.released = degrade, [], [], []

    async def admit(self, request, degradable):
        self.admitted.append((request.tenant, request.prefix_key, request.tools, degradable))
        lower = Effort.LOW if self.degrade and request.effort is Effort.HIGH else None
        return Admission(replica="r-1", effort=lower)

    def generate(self, request):
        self.requests.append(request)
        return self.engine.generate(request)

    def release(self, admission, end):
        self.released.append(end.output_tokens)


async def test_effort_sets_the_engine_priority_and_cost_prior(harmony, engine):
    recorder = _Recorder(engine)
    async with client_for(create_app(fast_config(), harmony, recorder)) as c:
        for effort in ("high", "low", "medium"):
            await c.post("/v1/chat/completions", json=chat(reasoning_effort=effort, max_tokens=2))
    priorities = {r.effort.value: r.priority for r in recorder.requests}
    assert priorities == {"low": 0, "medium": 1, "high": 2}
    assert all(r.expected_output_tokens == 2 for r in recorder.requests)  # capped by max_tokens


async def test_degraded_effort_is_rendered_and_announced(harmony, engine):
    recorder = _Recorder(engine, degrade=True)
    async with client_for(create_app(fast_config(), harmony, recorder)) as c:
        r = await c.post("/v1/chat/completions", json=chat(reasoning_effort="high", max_tokens=3))
    assert r.status_code == 200
    assert r.headers["x-reasoning-effort"] == "low"
    assert r.headers["x-reasoning-effort-degraded-from"] == "high"
    (request,) = recorder.requests
    assert request.effort is Effort.LOW and request.replica == "r-1"
    low_prompt = harmony.render([Turn("user", "Why is the sky blue?")], Effort.LOW)
    assert request.prompt_token_ids == low_prompt  # re-rendered: the effort is in the prompt
    assert recorder.released == [3]  # the engine ran to max_tokens: the scheduler learns 3


async def test_tenant_and_prefix_reach_the_scheduler(harmony, engine):
    recorder = _Recorder(engine)
    config = fast_config(auth={"api_keys": ["k-1", "k-2"]})
    async with client_for(create_app(config, harmony, recorder)) as c:
        auth = {"Authorization": "Bearer k-2"}
        for effort in ("low", "low", "high"):
            body = chat(reasoning_effort=effort, max_tokens=1, user="ignored-with-keys")
            await c.post("/v1/chat/completions", json=body, headers=auth)
        await c.post("/v1/completions", json={"model": "gpt-oss-120b", "prompt": "x"}, headers=auth)
    tenants = {a[0] for a in recorder.admitted}
    assert tenants == {"key-1"}  # named by position: no key material
    prefixes = [a[1] for a in recorder.admitted]
    assert prefixes[0] == prefixes[1] != prefixes[2]  # the effort is part of the prefix
    assert [a[3] for a in recorder.admitted] == [True, True, True, False]  # raw prompts stay


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_continuous_usage_stats_put_usage_so_far_on_every_chunk(client, path):
    body = chat() if "chat" in path else {"model": MODEL, "prompt": "Once", "max_tokens": 40}
    options = {"include_usage": True, "continuous_usage_stats": True}
    r = await client.post(path, json=body | {"stream": True, "seed": 3, "stream_options": options})
    chunks = sse_chunks(r.text)
    counted = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert len(counted) >= 2 and counted == sorted(counted) and counted[-1] > 0
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == counted[-1]
    plain = await client.post(
        path, json=body | {"stream": True, "seed": 3, "stream_options": {"include_usage": True}}
    )
    assert all(c.get("usage") is None for c in sse_chunks(plain.text)[:-1])  # only when asked


async def test_n_choices_each_run_as_a_request_and_usage_counts_the_prompt_once(harmony, engine):
    recorder = _Recorder(engine)
    async with client_for(create_app(fast_config(), harmony, recorder)) as c:
        body = chat(n=3, seed=5, max_tokens=30)
        full = (await c.post("/v1/chat/completions", json=body)).json()
        stream = await c.post(
            "/v1/chat/completions",
            json=body | {"stream": True, "stream_options": {"include_usage": True}},
        )
    assert [ch["index"] for ch in full["choices"]] == [0, 1, 2]
    texts = [ch["message"]["reasoning"] or "" for ch in full["choices"]]
    assert len(set(texts)) == 3  # three samples (seeds 5, 6, 7), not one thrice
    assert len(recorder.admitted) == 6 and len({r.request_id for r in recorder.requests}) == 6
    usage = full["usage"]
    assert usage["prompt_tokens"] == len(recorder.requests[0].prompt_token_ids)  # once
    assert usage["completion_tokens"] == 90  # three choices of max_tokens each
    chunks = sse_chunks(stream.text)
    finished = {ch["index"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")}
    assert finished == {0, 1, 2} and {c["id"] for c in chunks} == {chunks[0]["id"]}
    for i in range(3):  # each choice streams what it answers without streaming (same seed)
        streamed = "".join(
            ch["delta"].get("reasoning", "")
            for c in chunks
            for ch in c["choices"]
            if ch["index"] == i
        )
        assert streamed == texts[i]
    streamed_usage = chunks[-1]["usage"]
    for u in (streamed_usage, usage):  # the stream's prompt found the cache warm
        u.pop("prompt_tokens_details")
    assert streamed_usage == usage


async def test_completions_take_n_choices_as_chat_does(harmony, engine):
    recorder = _Recorder(engine)
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 12, "n": 3, "seed": 2}
    async with client_for(create_app(fast_config(), harmony, recorder)) as c:
        full = (await c.post("/v1/completions", json=body | {"logprobs": 1})).json()
        options = {"include_usage": True}
        stream = await c.post(
            "/v1/completions", json=body | {"stream": True, "stream_options": options}
        )
    assert [ch["index"] for ch in full["choices"]] == [0, 1, 2]
    texts = [ch["text"] for ch in full["choices"]]
    assert len(set(texts)) == 3  # three samples (seeds 2, 3, 4)
    for ch in full["choices"]:  # each choice's offsets count its own text from 0
        logprobs = ch["logprobs"]
        assert logprobs["text_offset"][0] == 0 and "".join(logprobs["tokens"]) == ch["text"]
    assert len({r.request_id for r in recorder.requests}) == 6
    assert full["usage"]["prompt_tokens"] == len(recorder.requests[0].prompt_token_ids)
    assert full["usage"]["completion_tokens"] == 36
    chunks = sse_chunks(stream.text)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    finished = {ch["index"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")}
    assert finished == {0, 1, 2}
    for i in range(3):
        streamed = "".join(ch["text"] for c in chunks for ch in c["choices"] if ch["index"] == i)
        assert streamed == texts[i]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


async def test_n_choices_count_against_the_keys_limits(harmony, engine):
    config = fast_config(auth={"api_keys": [{"name": "two", "key": "k-2", "max_concurrent": 2}]})
    async with client_for(create_app(config, harmony, InProcessEngine(engine))) as c:
        auth = {"Authorization": "Bearer k-2"}
        r = await c.post("/v1/chat/completions", json=chat(n=3, max_tokens=2), headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        r = await c.post("/v1/chat/completions", json=chat(n=2, max_tokens=2), headers=auth)
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        r = await c.post("/v1/chat/completions", json=chat(n=2, max_tokens=2), headers=auth)
        assert r.status_code == 200  # both slots came back when the choices ended


def check_token_logprobs(entries: list[dict], top: int) -> None:
    assert entries
    for e in entries:
        assert math.isfinite(e["logprob"]) and e["logprob"] <= 0
        assert bytes(e["bytes"]).decode("utf-8", errors="replace") == e["token"]
        ranked = [a["logprob"] for a in e["top_logprobs"]]
        assert len(ranked) == top and ranked == sorted(ranked, reverse=True)


async def test_chat_logprobs_cover_the_answer_tokens_streaming_or_not(client):
    body = chat(logprobs=True, top_logprobs=3, seed=4, reasoning_effort="low", max_tokens=2000)
    full = (await client.post("/v1/chat/completions", json=body)).json()
    choice = full["choices"][0]
    entries = choice["logprobs"]["content"]
    check_token_logprobs(entries, 3)
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]  # answer only
    stream = await client.post("/v1/chat/completions", json=body | {"stream": True})
    streamed = [
        e
        for c in sse_chunks(stream.text)
        for ch in c["choices"]
        for e in (ch.get("logprobs") or {}).get("content") or ()
    ]
    assert streamed == entries  # same seed, same tokens, same logprobs
    plain = (await client.post("/v1/chat/completions", json=chat(seed=4))).json()
    assert plain["choices"][0].get("logprobs") is None  # only when asked


async def test_completions_logprobs_in_the_legacy_shape(client):
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 20, "logprobs": 2, "seed": 1}
    choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert (
        len(logprobs["tokens"])
        == len(logprobs["token_logprobs"])
        == len(logprobs["text_offset"])
        > 0
    )
    assert all(math.isfinite(lp) for lp in logprobs["token_logprobs"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


SHARED = " ".join(f"Rule {i}: answer briefly and cite the tool you used." for i in range(40))


@pytest.mark.parametrize(
    ("path", "body", "usage_of"),
    [
        (
            "/v1/chat/completions",
            lambda q: chat(messages=[{"role": "developer", "content": SHARED},
                                     {"role": "user", "content": q}], max_tokens=8),
            lambda r: (r["usage"]["prompt_tokens"], r["usage"]["prompt_tokens_details"]),
        ),
        (
            "/v1/completions",
            lambda q: {"model": MODEL, "prompt": f"{SHARED} {q}", "max_tokens": 8},
            lambda r: (r["usage"]["prompt_tokens"], r["usage"]["prompt_tokens_details"]),
        ),
        (
            "/v1/responses",
            lambda q: {"model": MODEL, "instructions": SHARED, "input": q,
                       "max_output_tokens": 64, "store": False},
            lambda r: (r["usage"]["input_tokens"], r["usage"]["input_tokens_details"]),
        ),
    ],
)  # fmt: skip
async def test_usage_counts_the_prompt_tokens_the_engines_prefix_cache_held(
    harmony, engine, path, body, usage_of
):
    """A cold prompt reports nothing cached; a second one sharing its long head reports that
    head's whole blocks (the engine's block size), never the part that differs."""
    recorder = _Recorder(engine)
    async with client_for(create_app(fast_config(), harmony, recorder)) as client:
        cold = await client.post(path, json=body("What is the weather in Paris?"))
        warm = await client.post(path, json=body("And in Rome, tomorrow?"))
    assert cold.status_code == warm.status_code == 200, (cold.text, warm.text)
    prompt, details = usage_of(cold.json())
    assert details["cached_tokens"] == 0 and prompt > 400
    prompt, details = usage_of(warm.json())
    cached = details["cached_tokens"]
    first, second = (r.prompt_token_ids for r in recorder.requests)
    shared = shared_prefix(first, second)
    assert cached == shared // 16 * 16 and shared > 400, (cached, shared, prompt)


class RefusedOnce(InProcessEngine):
    """The first engine call of each request is refused (another gateway took the seat)."""

    def __init__(self, engine: MockEngine) -> None:
        super().__init__(engine)
        self.readmitted: list[LoadReport] = []
        self._refused: set[str] = set()

    def generate(self, request):
        if request.request_id not in self._refused:
            self._refused.add(request.request_id)
            return self._refusal()
        return super().generate(request)

    async def _refusal(self):
        yield EngineOutput([], refused=True, report=self.engine.load_report())

    async def readmit(self, admission, report):
        self.readmitted.append(report)
        return admission


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_request_runs_once_placed_again_and_the_client_sees_nothing(
    harmony, engine, stream
):
    refusing = RefusedOnce(engine)
    body = chat(seed=7, stream=stream)
    async with client_for(create_app(fast_config(), harmony, refusing)) as c:
        r = await c.post("/v1/chat/completions", json=body)
    async with client_for(create_app(fast_config(), harmony, InProcessEngine(engine))) as c:
        want = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and len(refusing.readmitted) == 1
    if stream:
        text = "".join(
            ch["choices"][0]["delta"].get("content") or ""
            for ch in sse_chunks(r.text)
            if ch["choices"]
        )
        assert text == "".join(
            ch["choices"][0]["delta"].get("content") or ""
            for ch in sse_chunks(want.text)
            if ch["choices"]
        )
    else:
        assert r.json()["choices"] == want.json()["choices"]
        got, plain = r.json()["usage"], want.json()["usage"]  # the second found the cache warm
        assert got["completion_tokens"] == plain["completion_tokens"]
        assert got["prompt_tokens"] == plain["prompt_tokens"]
