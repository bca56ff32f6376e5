"""vLLM's KV cache events, from the engine's hashes to the router's prefix index (no vLLM here:
the events are the dicts msgspec decodes vLLM's wire format into, as the engine tier sees)."""

import asyncio

from cluster.blocks import token_blocks
from cluster.contracts import CacheDelta, LoadReport
from cluster.engine.kv_events import CacheLedger, _Subscriber
from cluster.serve.dispatcher import Dispatcher
from tests.helpers import fast_config

PROMPT = list(range(1000, 1000 + 100))  # 3 blocks of 32 tokens, 6 of 16, and 4 left over


def stored(hashes, tokens, parent=None, size=32, group=1, kind="full_attention"):
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": size,
        "group_idx": group,
        "kv_cache_spec_kind": kind,
    }


def removed(hashes, group=1):
    return {"type": "BlockRemoved", "block_hashes": hashes, "group_idx": group}


def test_stored_blocks_get_the_routers_hashes_of_the_same_tokens():
    ledger = CacheLedger()
    first = ledger.apply([stored([b"a", b"b"], PROMPT[:64])])
    # The next block arrives in a later event, chained to its parent by vLLM's hash.
    second = ledger.apply([stored([b"c"], PROMPT[64:96], parent=b"b")])
    assert first.stored + second.stored == token_blocks(PROMPT)
    assert len(ledger) == 6
    assert ledger.snapshot() == CacheDelta(stored=token_blocks(PROMPT), reset=True)
    # What a new request with this prompt will not prefill, for the replica's load report.
    assert ledger.cached_tokens(PROMPT) == 96
    assert ledger.cached_tokens(PROMPT[:32] + [1] * 40) == 32
    assert ledger.cached_tokens(PROMPT[:32]) == 31  # the engine computes the last token


def test_a_sliding_window_groups_events_do_not_count():
    ledger = CacheLedger()
    delta = ledger.apply(
        [
            stored([b"a"], PROMPT[:32], group=0, kind="sliding_window"),
            stored([b"a"], PROMPT[:32], group=1),
            removed([b"a"], group=0),  # left the window: still cached for full attention
        ]
    )
    assert delta == CacheDelta(stored=token_blocks(PROMPT[:32]))
    assert ledger.apply([removed([b"a"], group=1)]).removed == token_blocks(PROMPT[:32])
    assert len(ledger) == 0


def test_a_block_whose_parent_is_unknown_and_odd_block_sizes_are_skipped():
    ledger = CacheLedger()
    assert ledger.apply([stored([b"c"], PROMPT[64:96], parent=b"b")]).stored == ()
    assert ledger.apply([stored([b"x"], PROMPT[:24], size=24)]).stored == ()
    assert ledger.apply([removed([b"unknown"])]) == CacheDelta()


def test_all_blocks_cleared_resets_the_receiver():
    ledger = CacheLedger()
    ledger.apply([stored([b"a"], PROMPT[:32])])
    delta = ledger.apply([{"type": "AllBlocksCleared"}, stored([b"b"], PROMPT[32:64], parent=b"a")])
    assert delta.reset and delta.stored == ()  # b's parent went with the clear
    assert len(ledger) == 0


async def test_a_slow_subscriber_gets_each_blocks_last_state_once():
    subscriber = _Subscriber(CacheDelta(stored=(1, 2), reset=True))
    subscriber.add(CacheDelta(removed=(1,)))
    subscriber.add(CacheDelta(stored=(1, 3), removed=(2,)))
    assert await subscriber.take() == CacheDelta(stored=(1, 3), removed=(2,), reset=True)
    subscriber.add(CacheDelta(removed=(3,)))
    assert await subscriber.take() == CacheDelta(removed=(3,))


def relaying(seats=4, at=100.0):
    return LoadReport(0, 0, 0, 10**6, 0, seats, at, cache_events=True)


async def test_the_gateways_index_follows_each_replicas_relayed_cache():
    blocks = token_blocks(PROMPT)
    opened: list[str] = []
    feeds: dict[str, asyncio.Queue] = {"a": asyncio.Queue(), "b": asyncio.Queue()}

    async def open_events(replica):
        opened.append(replica)
        while (delta := await feeds[replica].get()) is not None:
            yield delta

    d = Dispatcher(fast_config(), cache_events=open_events)
    d._loop = asyncio.get_running_loop()
    index = d.scheduler.prefix

    async def until(check):
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("the index did not follow")

    d.publish({"a": relaying(), "b": LoadReport(0, 0, 0, 10**6, 0, 4, 100.0)})
    await until(lambda: opened == ["a"])  # b does not relay: no stream to it
    feeds["a"].put_nowait(CacheDelta(stored=blocks, reset=True))
    await until(lambda: index.matches(blocks) == {"a": 6})
    feeds["a"].put_nowait(CacheDelta(removed=blocks[3:]))
    await until(lambda: index.matches(blocks) == {"a": 3})
    feeds["a"].put_nowait(None)  # the stream ended (the replica restarted): reopened next report
    await until(lambda: "a" not in d._feeds._readers)
    d.publish({"a": relaying(at=101.0)})
    await until(lambda: opened == ["a", "a"])
    feeds["a"].put_nowait(CacheDelta(stored=blocks[:1], reset=True))
    await until(lambda: index.matches(blocks) == {"a": 1})
    d.publish({})  # gone: its stream closes and its blocks leave the index
    await until(lambda: not d._feeds._readers and index.matches(blocks) == {})
