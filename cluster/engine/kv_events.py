"""vLLM's KV cache events, translated into the router's block identity.

vLLM publishes what its prefix cache stores and evicts (`KVEventsConfig`, ZMQ publisher:
`BlockStored`, `BlockRemoved`, `AllBlocksCleared`), keyed by its own block hashes (sha256 of
the token ids, salted per process). The router indexes blocks by `cluster.blocks` hashes of the
same harmony-rendered token ids, so the engine replica translates: a stored block's hash is
chained from its parent's (`cluster.blocks.chain`) over the tokens the event carries. A
vLLM block of k x `BLOCK_SIZE` tokens is k of ours. A hybrid model (gpt-oss alternates sliding-
window and full attention) caches each block once per KV cache group, and a sliding-window group
drops a block as soon as it leaves the window: what a prefix hit needs is the full-attention
groups' blocks, so the sliding groups' events are skipped, and a block counts as cached while
any other group holds it.

`CacheLedger` is pure: the replica feeds it decoded events and hands gateways what changed
(`CacheDelta`), or everything it holds to a gateway that just subscribed. `CacheRelay` is the
replica's shell around it: the events come from vLLM's socket, and go to each gateway over a Serve
stream (`EngineServer.cache_events`), so no gateway needs to reach an engine's port.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.blocks import BLOCK_SIZE, chain, token_blocks
from cluster.contracts import CacheDelta

logger = logging.getLogger(__name__)


@dataclass
class _Block:
    ours: tuple[int, ...]  # our hashes of the BLOCK_SIZE pieces, in order
    groups: set[Hashable]


@dataclass
class CacheLedger:
    """One engine's cached blocks, by vLLM hash, with our hashes beside them."""

    size: int = BLOCK_SIZE
    _blocks: dict[Hashable, _Block] = field(default_factory=dict)
    _ours: set[int] = field(default_factory=set)  # every block of ours held
    _sliding: set[Hashable] = field(default_factory=set)  # groups of sliding-window layers
    _warned: bool = False

    def apply(self, events: Iterable[Mapping[str, Any]]) -> CacheDelta:
        """Apply decoded events (msgspec's generic form: a dict with a "type" each)."""
        stored: list[int] = []
        removed: list[int] = []
        reset = False
        for event in events:
            kind = event.get("type")
            if kind == "BlockStored":
                stored += self._stored(event)
            elif kind == "BlockRemoved":
                removed += self._removed(event)
            elif kind == "AllBlocksCleared":
                self._blocks.clear()
                self._ours.clear()
                stored, removed, reset = [], [], True
        return CacheDelta(tuple(stored), tuple(removed), reset)

    def snapshot(self) -> CacheDelta:
        """Everything held now, for a gateway that just subscribed."""
        blocks = tuple(h for block in self._blocks.values() for h in block.ours)
        return CacheDelta(stored=blocks, reset=True)

    def __len__(self) -> int:
        return len(self._ours)

    def cached_tokens(self, token_ids: Sequence[int]) -> int:
        """Leading prompt tokens the cache holds: what the engine will not prefill (it always
        computes the last token)."""
        held = 0
        for h in token_blocks(token_ids, self.size):
            if h not in self._ours:
                break
            held += self.size
        return min(held, max(len(token_ids) - 1, 0))

    def _stored(self, event: Mapping[str, Any]) -> list[int]:
        size, tokens = event["block_size"], event["token_ids"]
        if size % self.size:
            if not self._warned:
                logger.warning(
                    "KV events of block size %d are not whole %d-token blocks: ignored "
                    "(set engine_args.block_size to a multiple of %d)",
                    size,
                    self.size,
                    self.size,
                )
                self._warned = True
            return []
        group = event.get("group_idx")
        if event.get("kv_cache_spec_kind") == "sliding_window":
            self._sliding.add(group)
            return []
        parent_hash = event.get("parent_block_hash")
        if parent_hash is None:
            parent = 0
        elif (known := self._blocks.get(parent_hash)) is not None:
            parent = known.ours[-1]
        else:  # its prefix left our view (evicted first): it cannot be matched anyway
            return []
        out: list[int] = []
        for i, vllm_hash in enumerate(event["block_hashes"]):
            block = self._blocks.get(vllm_hash)
            if block is None:
                start = i * size
                pieces = (
                    tuple(tokens[j : j + self.size]) for j in range(start, start + size, self.size)
                )
                block = self._blocks[vllm_hash] = _Block(chain(pieces, parent), set())
                self._ours.update(block.ours)
                out += block.ours
            block.groups.add(group)
            parent = block.ours[-1]
        return out

    def _removed(self, event: Mapping[str, Any]) -> list[int]:
        group = event.get("group_idx")
        if group in self._sliding:
            return []
        out: list[int] = []
        for vllm_hash in event["block_hashes"]:
            block = self._blocks.get(vllm_hash)
            if block is None:
                continue
            block.groups.discard(group)
            if not block.groups:
                del self._blocks[vllm_hash]
                self._ours.difference_update(block.ours)
                out += block.ours
        return out


class _Subscriber:
    """One gateway's pending changes (on the replica's event loop): coalesced until it takes
    them, the last word on each block winning, so a slow reader costs memory per block at most."""

    def __init__(self, first: CacheDelta) -> None:
        self._pending: dict[int, bool] = {}  # block -> cached
        self._reset = False
        self._ready = asyncio.Event()
        self.add(first)

    def add(self, delta: CacheDelta) -> None:
        if delta.reset:
            self._pending.clear()
            self._reset = True
        for h in delta.stored:
            self._pending[h] = True
        for h in delta.removed:
            self._pending[h] = False
        self._ready.set()

    async def take(self) -> CacheDelta:
        await self._ready.wait()
        self._ready.clear()
        pending, reset = self._pending, self._reset
        self._pending, self._reset = {}, False
        return CacheDelta(
            stored=tuple(h for h, cached in pending.items() if cached),
            removed=tuple(h for h, cached in pending.items() if not cached),
            reset=reset,
        )


class CacheRelay:
    """The replica's end: a thread reads vLLM's KV event publisher (a ZMQ socket private to the
    node), keeps the `CacheLedger`, and hands each subscribed gateway the snapshot, then what
    changes. Connected before the engine takes its first request, so no event is missed."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.setsockopt(zmq.RCVTIMEO, 200)  # ms: how soon `close` is noticed
        self._socket.connect(endpoint)
        self._ledger = CacheLedger()
        self._lock = threading.Lock()
        self._subscribers: dict[_Subscriber, asyncio.AbstractEventLoop] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="kv-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import msgspec
        import zmq

        try:
            while not self._closed.is_set():
                try:
                    _topic, _seq, payload = self._socket.recv_multipart()
                except zmq.Again:
                    continue
                _ts, events, *_ = msgspec.msgpack.decode(payload)
                with self._lock:
                    delta = self._ledger.apply(events)
                    if delta.stored or delta.removed or delta.reset:
                        for subscriber, loop in self._subscribers.items():
                            if not loop.is_closed():
                                loop.call_soon_threadsafe(subscriber.add, delta)
        finally:
            self._socket.close(linger=0)

    async def subscribe(self) -> AsyncIterator[CacheDelta]:
        """Everything cached now, then each batch of changes as it comes."""
        with self._lock:
            subscriber = _Subscriber(self._ledger.snapshot())
            self._subscribers[subscriber] = asyncio.get_running_loop()
        try:
            while True:
                yield await subscriber.take()
        finally:
            with self._lock:
                del self._subscribers[subscriber]

    def cached_tokens(self, token_ids: Sequence[int]) -> int:
        with self._lock:
            return self._ledger.cached_tokens(token_ids)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
