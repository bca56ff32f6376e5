"""Which replica's prefix cache holds which prompt blocks, as far as the scheduler knows.

Approximate, from what it placed: a request placed on a replica leaves its prompt blocks there
(`cluster.blocks` hashes of the harmony-rendered token ids, the same blocks vLLM caches). Each
replica's entries are kept to its KV capacity in blocks, least recently placed dropped first, as
the engine evicts least recently used free blocks; the engine may still have evicted sooner under
load, which makes a replica look warmer than it is. KV events from the engine (blocks stored and
removed) correct it where they arrive. Pure.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class PrefixIndex:
    _holders: dict[int, set[Hashable]] = field(default_factory=dict)  # block -> replicas
    _lru: dict[Hashable, OrderedDict[int, None]] = field(default_factory=dict)

    def placed(self, replica: Hashable, blocks: Sequence[int], capacity_blocks: int) -> None:
        """A request with these prompt blocks went to `replica`: it holds them now."""
        self.stored(replica, blocks)
        lru = self._lru[replica]
        while len(lru) > capacity_blocks > 0:
            self._drop(replica, lru.popitem(last=False)[0])

    def stored(self, replica: Hashable, blocks: Iterable[int]) -> None:
        lru = self._lru.setdefault(replica, OrderedDict())
        for h in blocks:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                self._holders.setdefault(h, set()).add(replica)

    def removed(self, replica: Hashable, blocks: Iterable[int]) -> None:
        lru = self._lru.get(replica)
        if lru is None:
            return
        for h in blocks:
            if h in lru:
                del lru[h]
                self._drop(replica, h)

    def _drop(self, replica: Hashable, block: int) -> None:
        holders = self._holders[block]
        holders.discard(replica)
        if not holders:
            del self._holders[block]

    def forget(self, replica: Hashable) -> None:
        """The replica is gone, or restarted with an empty cache."""
        for h in self._lru.pop(replica, ()):
            self._drop(replica, h)

    def matches(self, blocks: Sequence[int]) -> dict[Hashable, int]:
        """Per replica holding the first block: how many leading blocks it holds."""
        if not blocks or (first := self._holders.get(blocks[0])) is None:
            return {}
        alive, depth = set(first), {}
        for i, h in enumerate(blocks[1:], 1):
            holders = self._holders.get(h)
            gone = alive if holders is None else alive - holders
            for replica in gone:
                depth[replica] = i
            alive = alive - gone
            if not alive:
                return depth
        return depth | dict.fromkeys(alive, len(blocks))

    def blocks(self, replica: Hashable) -> int:
        return len(self._lru.get(replica, ()))
