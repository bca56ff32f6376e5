"""Stored responses for `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`.

A stored response keeps the Response object and the conversation that produced it (as harmony
turns), so a follow-up can be rendered on any gateway replica. `InMemoryStore` serves one gateway
process (local runs, tests); a cluster needs a store every gateway replica reaches. Entries expire
after `ttl_s`. A store that cannot be reached raises `StoreUnavailable`: stateful calls answer 503,
stateless ones do not touch the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.harmony import Turn


class StoreUnavailable(Exception):
    """The response store cannot be reached."""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the Response object, as JSON
    turns: tuple[Turn, ...]  # the conversation up to and including this response's output


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def put(self, response_id: str, stored: StoredResponse) -> None: ...

    async def delete(self, response_id: str) -> bool: ...


class InMemoryStore:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._items: dict[str, tuple[float, StoredResponse]] = {}

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (at, _) in self._items.items() if at <= now - self._ttl_s]:
            del self._items[key]

    async def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        found = self._items.get(response_id)
        return found[1] if found else None

    async def put(self, response_id: str, stored: StoredResponse) -> None:
        self._expire()
        self._items[response_id] = (self._clock(), stored)

    async def delete(self, response_id: str) -> bool:
        self._expire()
        return self._items.pop(response_id, None) is not None
