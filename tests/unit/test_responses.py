"""`/v1/responses` through the official `openai` SDK (in-process app, mock engine): each effort,
streaming events in OpenAI's order, retrieve and delete, a two-turn conversation by
`previous_response_id` (placed back where its first turn is cached), a function-call round trip,
and a store outage."""

import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from cluster.api.engine_client import InProcessEngine
from cluster.api.gateway import create_app
from cluster.api.response_store import InMemoryStore, StoreUnavailable
from cluster.contracts import Effort, LoadReport
from cluster.engine.mock import MockEngine
from cluster.harmony import Turn
from cluster.serve.dispatcher import Dispatcher
from tests.helpers import fast_config

MODEL = "gpt-oss-120b"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}  # fmt: skip


def sdk(app) -> AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw/v1")
    return AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=http, max_retries=0)


@pytest.fixture
def engine(harmony):
    return MockEngine(fast_config(), harmony)


@pytest.fixture
def client(harmony, engine):
    return sdk(create_app(fast_config(), harmony, InProcessEngine(engine)))


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_create_reports_reasoning_and_answer_with_real_usage(client, effort):
    r = await client.responses.create(model=MODEL, input="Why is the sky blue?",
                                      reasoning={"effort": effort})  # fmt: skip
    assert r.status == "completed" and r.reasoning.effort == effort
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text and r.output_text
    usage = r.usage
    assert usage.output_tokens_details.reasoning_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_stream_events_come_in_openai_order(client):
    async with client.responses.stream(model=MODEL, input="Why is the sky blue?",
                                       reasoning={"effort": "medium"}) as stream:  # fmt: skip
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress",
                         "response.output_item.added"]  # fmt: skip
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    expected = ["response.reasoning_text.delta", "response.reasoning_text.done",
                "response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done"]  # fmt: skip
    firsts = [kinds.index(k) for k in expected]
    assert firsts == sorted(firsts)  # reasoning first, then the answer, each part opened first
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text and final.usage.output_tokens > 0


async def test_two_turns_retrieve_and_delete(client):
    first = await client.responses.create(model=MODEL, input="Why is the sky blue?")
    second = await client.responses.create(model=MODEL, input="And at sunset?",
                                           previous_response_id=first.id)  # fmt: skip
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn was replayed
    assert (await client.responses.retrieve(first.id)).output_text == first.output_text
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="x", previous_response_id=first.id)
    unstored = await client.responses.create(model=MODEL, input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


async def test_a_function_call_round_trip(client):
    r = await client.responses.create(model=MODEL, input="Call get_weather for Paris",
                                      tools=[WEATHER])  # fmt: skip
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and "city" in call.arguments
    follow = await client.responses.create(
        model=MODEL, previous_response_id=r.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 21}'}],
    )  # fmt: skip
    assert follow.status == "completed"
    with pytest.raises(openai.BadRequestError) as bad:  # an output answering no call
        await client.responses.create(model=MODEL, input=[
            {"type": "function_call_output", "call_id": "call_nope", "output": "x"}])  # fmt: skip
    assert bad.value.body["param"] == "input.0.call_id"


class _Down(InMemoryStore):
    async def get(self, response_id):
        raise StoreUnavailable

    async def put(self, response_id, stored):
        raise StoreUnavailable


async def test_a_store_outage_fails_stateful_calls_clearly_and_no_others(harmony, engine):
    app = create_app(fast_config(), harmony, InProcessEngine(engine), store=_Down(60))
    client = sdk(app)
    ok = await client.responses.create(model=MODEL, input="Hi", store=False)
    assert ok.status == "completed"
    with pytest.raises(openai.InternalServerError) as err:
        await client.responses.create(model=MODEL, input="x", previous_response_id="resp_1")
    assert err.value.status_code == 503 and err.value.body["code"] == "store_unavailable"
    with pytest.raises(openai.InternalServerError):
        await client.responses.retrieve("resp_1")


class _Placed(InProcessEngine):
    """The gateway's real dispatcher (effort-aware scheduler, prefix index) over two replicas
    that both run on one mock engine; records where each request was placed."""

    def __init__(self, engine, dispatcher):
        super().__init__(engine)
        self.dispatcher, self.placed = dispatcher, []

    async def admit(self, request, degradable):
        admission = await self.dispatcher.admit(request, degradable)
        self.placed.append(admission.replica)
        return admission

    def release(self, admission, end):
        self.dispatcher.release(admission, end)


async def test_a_follow_up_goes_back_to_the_replica_that_holds_its_conversation(harmony, engine):
    now = time.time()
    # More prefill queued on the conversation's replica than a whole short prompt: a request
    # that shares only the system message there goes elsewhere, one that shares its history not.
    queued = len(harmony.render([Turn("user", "Tell me a joke.")], Effort.MEDIUM)) + 32

    def report(prefill=0):
        return LoadReport(0, 0, 0, 10**6, 0, 8, now, prefill_tokens=prefill)

    dispatcher = Dispatcher(fast_config())
    placed = _Placed(engine, dispatcher)
    client = sdk(create_app(fast_config(), harmony, placed))
    dispatcher.publish({"a": report(), "b": report()})
    question = "Why is the sky blue? " * 40  # a history far longer than the prefill queued
    first = await client.responses.create(model=MODEL, input=question)
    (home,) = placed.placed
    other = "b" if home == "a" else "a"
    dispatcher.publish({home: report(prefill=queued), other: report()})
    await client.responses.create(model=MODEL, input="Tell me a joke.")
    await client.responses.create(
        model=MODEL, input="And at sunset?", previous_response_id=first.id
    )
    assert placed.placed == [home, other, home]
