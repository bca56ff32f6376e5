"""Stored responses for `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`.

A stored response keeps the Response object and the conversation that produced it (as harmony
turns), so a follow-up can be rendered on any gateway replica. `InMemoryStore` serves one gateway
process (local runs with one gateway, tests); `RedisStore` is what every gateway replica of a
cluster reaches. Entries expire after `ttl_s`. A store that cannot be reached raises
`StoreUnavailable`: stateful calls answer 503, stateless ones do not touch the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cluster.config import ResponsesConfig
from cluster.harmony import ToolCall, Turn


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


def encode(stored: StoredResponse) -> str:
    return json.dumps({"response": stored.response, "turns": [asdict(t) for t in stored.turns]})


def decode(raw: str | bytes) -> StoredResponse:
    data = json.loads(raw)
    turns = tuple(
        Turn(
            t["role"],
            t["content"],
            t["reasoning"],
            tuple(ToolCall(**c) for c in t["tool_calls"]),
            t["tool_name"],
        )
        for t in data["turns"]
    )
    return StoredResponse(data["response"], turns)


class RedisStore:
    """Stored responses in Redis (SETEX with the TTL), shared by every gateway replica."""

    PREFIX = "gpt-oss:response:"

    def __init__(self, url: str, ttl_s: float, timeout_s: float = 2.0) -> None:
        self._redis = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._ttl_s = max(1, int(ttl_s))

    async def _call(self, method: str, *args):
        try:
            return await getattr(self._redis, method)(*args)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(type(err).__name__) from None

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._call("get", self.PREFIX + response_id)
        return None if raw is None else decode(raw)

    async def put(self, response_id: str, stored: StoredResponse) -> None:
        await self._call("setex", self.PREFIX + response_id, self._ttl_s, encode(stored))

    async def delete(self, response_id: str) -> bool:
        return bool(await self._call("delete", self.PREFIX + response_id))


def make_store(config: ResponsesConfig) -> ResponseStore:
    if config.store == "redis":
        assert config.redis_url is not None  # the config requires it
        return RedisStore(config.redis_url.get_secret_value(), config.ttl_s)
    return InMemoryStore(config.ttl_s)
