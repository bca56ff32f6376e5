"""The gateway's end of the engines' prefix-cache events: one stream per engine replica that
relays them (`EngineServer.cache_events`), applied to the scheduler's `PrefixIndex` as they come.

A stream opens for each replica whose load report says it relays (`LoadReport.cache_events`),
starts with a snapshot of that replica's cache, and closes when the replica leaves; one that
breaks (`EngineUnavailable`) or ends reopens at the next report. Plain asyncio over an injected `open` call, so unit tests
drive it without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from cluster.contracts import CacheDelta, EngineUnavailable

logger = logging.getLogger(__name__)


class CacheFeeds:
    def __init__(
        self,
        open: Callable[[str], AsyncIterator[CacheDelta]],
        apply: Callable[[str, CacheDelta], None],
    ) -> None:
        self._open = open
        self._apply = apply
        self._readers: dict[str, asyncio.Task] = {}

    def sync(self, replicas: Iterable[str]) -> None:
        """The replicas that relay now (on the loop): read each, stop reading the rest."""
        wanted = set(replicas)
        for replica in wanted - self._readers.keys():
            self._readers[replica] = asyncio.create_task(self._read(replica))
        for replica in self._readers.keys() - wanted:
            self._readers.pop(replica).cancel()

    async def _read(self, replica: str) -> None:
        task = asyncio.current_task()
        try:
            async for delta in self._open(replica):
                self._apply(replica, delta)
        except EngineUnavailable as err:  # the replica died or Ray stopped the stream
            logger.info("cache events from %s stopped: %s", replica, err)
        finally:
            if self._readers.get(replica) is task:
                del self._readers[replica]
