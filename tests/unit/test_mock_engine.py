import asyncio
import statistics
from dataclasses import replace

import pytest

from cluster.contracts import Effort, EngineRequest, SamplingParams
from cluster.engine.gatekeeper import Gatekeeper
from cluster.engine.mock import MockEngine
from cluster.engine.mock_replies import ReplyWriter
from cluster.harmony import Turn
from tests.helpers import fast_config


@pytest.fixture
def engine(harmony):
    return MockEngine(fast_config(), harmony)


def request(harmony, rid, effort=Effort.LOW, max_tokens=100_000, seed=None, text="Explain tides"):
    prompt = harmony.render([Turn("user", text)], effort)
    sampling = SamplingParams(max_tokens, seed=seed, stop_token_ids=harmony.stop_token_ids)
    return EngineRequest(rid, prompt, sampling, effort, expected_output_tokens=300)


@pytest.mark.parametrize("effort", list(Effort))
def test_output_lengths_follow_the_effort_prior(harmony, effort):
    cfg = fast_config()
    writer = ReplyWriter(harmony, cfg.efforts, 0.2, seed=0)
    prompt = harmony.render([Turn("user", "q")], effort)
    lengths = [len(writer.write(prompt, seed=i, request_id="r")) for i in range(300)]
    want = cfg.efforts[effort].output_tokens.median_tokens
    assert statistics.median(lengths) == pytest.approx(want, rel=0.15)


def test_high_effort_is_an_order_of_magnitude_longer(harmony):
    writer = ReplyWriter(harmony, fast_config().efforts, 0.2, seed=0)
    low = harmony.render([Turn("user", "q")], Effort.LOW)
    high = harmony.render([Turn("user", "q")], Effort.HIGH)

    def mean(prompt):
        return statistics.fmean(len(writer.write(prompt, i, "r")) for i in range(100))

    assert 10 <= mean(high) / mean(low) <= 30


async def collect(engine, req):
    tokens, finish = [], None
    async for out in engine.generate(req):
        tokens += out.token_ids
        finish = out.finish_reason
    return tokens, finish


async def test_same_seed_same_reply(engine, harmony):
    a, _ = await collect(engine, request(harmony, "a", seed=3))
    b, _ = await collect(engine, request(harmony, "b", seed=3))
    assert a == b


@pytest.mark.parametrize("max_tokens", [100_000, 150])
async def test_a_resumed_reply_continues_where_it_stopped(engine, harmony, max_tokens):
    """A continuation (the prompt and the reply's first tokens, the budget left) writes the rest
    of the same reply, ending as the whole one would."""
    whole = request(harmony, "a", seed=5, max_tokens=max_tokens)
    tokens, finish = await collect(engine, whole)
    done = 40
    rest = replace(
        whole,
        request_id="b",
        prompt_token_ids=[*whole.prompt_token_ids, *tokens[:done]],
        sampling=replace(whole.sampling, max_tokens=max_tokens - done),
        resumed_tokens=done,
    )
    assert await collect(engine, rest) == (tokens[done:], finish)


async def test_max_tokens_truncates_with_length(engine, harmony):
    tokens, finish = await collect(engine, request(harmony, "a", max_tokens=7))
    assert len(tokens) == 7 and finish == "length"
    tokens, finish = await collect(engine, request(harmony, "b", seed=1))
    assert finish == "stop" and tokens[-1] == harmony.special_id("<|return|>")


async def test_streams_batch_tokens_per_message(engine, harmony):
    messages = 0
    tokens = 0
    async for out in engine.generate(request(harmony, "a", effort=Effort.HIGH, seed=2)):
        messages += 1
        tokens += len(out.token_ids)
    assert tokens > 1000
    assert messages < tokens  # tokens produced between wake-ups travel together


async def test_stream_interval_sends_n_tokens_per_output_between_the_first_and_last(harmony):
    engine = MockEngine(fast_config(engine={"stream_interval": 8}), harmony)
    plain = MockEngine(fast_config(), harmony)
    req = request(harmony, "a", effort=Effort.MEDIUM, seed=4)
    outputs = [out async for out in engine.generate(req)]
    assert outputs[0].received_at is not None and outputs[-1].finish_reason == "stop"
    assert all(len(out.token_ids) >= 8 for out in outputs[1:-1])
    tokens, _ = await collect(plain, req)
    assert [t for out in outputs for t in out.token_ids] == tokens  # same reply, fewer messages
    assert len(outputs) <= len(tokens) / 8 + 2


async def test_a_reader_that_lags_still_gets_the_last_tokens_and_the_finish(engine, harmony):
    req = request(harmony, "a", max_tokens=40, seed=5)
    whole, _ = await collect(engine, request(harmony, "b", max_tokens=40, seed=5))
    stream = engine.generate(req)
    first = await anext(stream)
    deadline = asyncio.get_running_loop().time() + 10
    while engine.load_report().running:  # the engine finishes while the reader holds off
        assert asyncio.get_running_loop().time() < deadline, "the request never finished"
        await asyncio.sleep(0.01)
    rest = [out async for out in stream]
    assert rest and rest[-1].finish_reason == "length"
    assert first.token_ids + [t for out in rest for t in out.token_ids] == whole


async def test_closing_the_stream_aborts_the_request(engine, harmony):
    streams = [engine.generate(request(harmony, f"r{i}", effort=Effort.HIGH)) for i in range(5)]
    for s in streams:
        await anext(s)
    assert engine.load_report().running == 5
    for s in streams[:3]:
        await s.aclose()
    report = engine.load_report()
    assert report.running + report.waiting == 2
    for s in streams[3:]:
        await s.aclose()
    report = engine.load_report()
    assert (report.running, report.waiting, report.kv_used_tokens) == (0, 0, 0)


async def test_load_report_counts_outstanding_expected_work(engine, harmony):
    streams = [engine.generate(request(harmony, f"r{i}", effort=Effort.HIGH)) for i in range(3)]
    await asyncio.gather(*(anext(s) for s in streams))
    report = engine.load_report()
    assert report.running == 3
    assert 0 < report.outstanding_tokens <= 3 * 300
    assert report.kv_used_tokens > 0
    for s in streams:
        await s.aclose()


async def test_the_gatekeeper_refuses_beyond_its_seats_and_its_last_output_says_its_load(harmony):
    """Two seats: a third request at once is refused with the engine's load (two taken), and a
    finished request's last output carries the load with its seat free."""
    config = fast_config(engine={"mock": {"max_num_seqs": 2}})
    gate = Gatekeeper(MockEngine(config, harmony), config.router)
    held = [gate.generate(request(harmony, f"r{i}")) for i in range(2)]
    firsts = [await anext(stream) for stream in held]
    assert not any(first.refused for first in firsts)
    refusal = [out async for out in gate.generate(request(harmony, "r2"))]
    assert len(refusal) == 1 and refusal[0].refused and refusal[0].token_ids == []
    report = refusal[0].report
    assert report.running + report.waiting == 2 and gate.refused == 1
    await held[0].aclose()  # a client that leaves frees its seat
    *_, last = [out async for out in held[1]]
    assert last.finish_reason is not None
    assert last.report.running + last.report.waiting == 0
    tokens, finish = await collect(gate, request(harmony, "r3"))
    assert tokens and finish is not None
