"""API keys and per-key quotas: who may call, and how much.

Keys are kept only as SHA-256 digests: a key in the config or the mounted Secret is hashed at load,
or given as its digest so the config never holds it. A supplied bearer token is hashed and compared
with every digest in constant time (no early exit), so timing says nothing about which key came
close. Keys are known by their name in logs, tenants and metrics, never by their material.

`Quotas` enforces each key's requests and tokens per minute (sliding 60 s windows) and concurrent
requests across the whole cluster: each gateway replica counts its own requests exactly and adds
what the other replicas last reported (`elsewhere`, synced about once a second through
`cluster/serve/quota_ledger.py`), so a key can overshoot its limits by at most one sync period of
traffic. Pure: the caller passes the time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cluster.config import ApiKey
from cluster.contracts import Outcome

if TYPE_CHECKING:
    from cluster.api.generation import RequestRecord

WINDOW_S = 60.0


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Identity:
    name: str
    revoked: bool
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent: int | None


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [(self._digest(k), self._identity(k)) for k in keys]

    @staticmethod
    def _digest(key: ApiKey) -> bytes:
        if key.sha256 is not None:
            return bytes.fromhex(key.sha256)
        assert key.key is not None  # the config requires one of them
        return digest(key.key.get_secret_value())

    @staticmethod
    def _identity(key: ApiKey) -> Identity:
        return Identity(
            key.name,
            key.revoked,
            key.requests_per_minute,
            key.tokens_per_minute,
            key.max_concurrent,
        )

    @property
    def open(self) -> bool:
        """No keys configured: every request is let in (local use only)."""
        return not self._keys

    def identify(self, supplied: str) -> Identity | None:
        """The key `supplied` is, compared against every key in constant time; None: unknown."""
        candidate = digest(supplied)
        found = None
        for key_digest, identity in self._keys:
            if hmac.compare_digest(candidate, key_digest):
                found = identity
        return found


@dataclass(frozen=True)
class Refusal:
    reason: str  # requests_per_minute, tokens_per_minute, max_concurrent
    retry_after_s: int
    message: str


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


@dataclass(frozen=True)
class KeyUsage:
    """One key's use over the last window: what replicas tell each other."""

    requests: int = 0
    tokens: int = 0
    in_flight: int = 0

    def __add__(self, other: KeyUsage) -> KeyUsage:
        return KeyUsage(
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.in_flight + other.in_flight,
        )


@dataclass
class QuotaHold:
    """A key's quota slots, one per choice of the request (`n`), held from admission to each
    choice's end: a completion hook that releases one slot per record, charging what that choice
    used (nothing for one shed by admission). Called with no record, the request failed before
    it began: every slot still held goes back."""

    quotas: Quotas
    key: str
    clock: Callable[[], float]
    held: int = 1

    def __call__(self, record: RequestRecord | None = None) -> None:
        for _ in range(self.held if record is None else min(self.held, 1)):
            self.held -= 1
            used = (
                0
                if record is None or record.outcome == Outcome.REJECTED
                else record.prompt_tokens + record.completion_tokens
            )
            self.quotas.release(self.key, used, self.clock())


class Quotas:
    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = {}
        self._elsewhere: dict[str, KeyUsage] = {}

    def usage(self, now: float) -> dict[str, KeyUsage]:
        """This replica's use per key, for the other replicas."""
        out = {}
        for name, usage in self._usage.items():
            usage.expire(now)
            out[name] = KeyUsage(len(usage.requests), usage.token_sum, usage.in_flight)
        return out

    def elsewhere(self, usage: dict[str, KeyUsage]) -> None:
        """What the other gateway replicas last reported, summed per key."""
        self._elsewhere = usage

    def acquire(self, key: Identity, now: float, count: int = 1) -> Refusal | None:
        """Take `count` request slots for `key` (a request's choices: each is a request's
        work), or say which limit refuses them and for how long."""
        usage = self._usage.setdefault(key.name, _Usage())
        usage.expire(now)
        other = self._elsewhere.get(key.name, KeyUsage())
        rpm, tpm, concurrent = key.requests_per_minute, key.tokens_per_minute, key.max_concurrent
        if concurrent is not None and usage.in_flight + other.in_flight + count > concurrent:
            return Refusal("max_concurrent", 1, f"{concurrent} concurrent requests per key")
        requests = len(usage.requests) + other.requests
        if rpm is not None and requests + count > rpm:
            if other.requests:  # spread over the window, as far as this replica knows
                wait = WINDOW_S * (requests - rpm + 1) / requests
            else:  # when enough of the oldest have left for one more
                ahead = min(len(usage.requests) + count - 1 - rpm, len(usage.requests) - 1)
                wait = (usage.requests[ahead] if ahead >= 0 else now) + WINDOW_S - now
            return Refusal("requests_per_minute", _ceil(wait), f"{rpm} requests per minute")
        tokens = usage.token_sum + other.tokens
        if tpm is not None and tokens >= tpm:
            if other.tokens:
                wait = WINDOW_S * (tokens - tpm + 1) / tokens
            else:
                wait = _until_below(usage.tokens, usage.token_sum - tpm, now)
            return Refusal("tokens_per_minute", _ceil(wait), f"{tpm} tokens per minute")
        usage.requests.extend([now] * count)
        usage.in_flight += count
        return None

    def release(self, key: str, tokens: int, now: float) -> None:
        """The request is over: free its slot and charge the tokens it used (prompt + output)."""
        usage = self._usage.get(key)
        if usage is None:
            return
        usage.in_flight = max(0, usage.in_flight - 1)
        if tokens:
            usage.tokens.append((now, tokens))
            usage.token_sum += tokens


def _ceil(seconds: float) -> int:
    return max(1, int(-(-seconds // 1)))


def _until_below(tokens: deque[tuple[float, int]], excess: int, now: float) -> float:
    """Seconds until enough charged tokens leave the window to drop `excess` + 1 of them."""
    dropped = 0
    for at, n in tokens:
        dropped += n
        if dropped > excess:
            return at + WINDOW_S - now
    return WINDOW_S
