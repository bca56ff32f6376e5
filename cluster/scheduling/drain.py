"""How fast the queue drains: the evidence behind admission's projected wait and Retry-After.

Only time during which requests wait counts. When nothing waits, dispatches follow arrivals and
say nothing about capacity, so a plain dispatches-per-window rate reads low right after a quiet
spell and would shed the first burst. While requests wait, every seat that frees is refilled at
once, so waited dispatches over waited time is what seats, KV and the batch let through. Pure:
every call takes `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DrainRate:
    window_s: float
    min_evidence_s: float = 0.5  # less backlogged time than this is no evidence
    _waited: deque[tuple[float, int]] = field(default_factory=deque)  # (at, cost tokens)
    _spans: deque[tuple[float, float]] = field(default_factory=deque)  # closed backlogged spans
    _open_since: float | None = None

    def backlogged(self, now: float, waiting: bool) -> None:
        """Note whether requests are waiting now (call on every queue change)."""
        if waiting and self._open_since is None:
            self._open_since = now
        elif not waiting and self._open_since is not None:
            self._spans.append((self._open_since, now))
            self._open_since = None

    def dispatched(self, now: float, waited: bool, tokens: int = 0) -> None:
        if waited:
            self._waited.append((now, tokens))

    def returned(self, dispatched_at: float, tokens: int) -> None:
        """A request dispatched at `dispatched_at` came back unserved (its engine refused it):
        it did not drain."""
        for i in range(len(self._waited) - 1, -1, -1):
            at, cost = self._waited[i]
            if at < dispatched_at:
                return
            if cost == tokens:
                del self._waited[i]
                return

    def rate(self, now: float) -> float | None:
        """Requests per second over the window's backlogged time; None without evidence. A
        backlog that nothing has left for the whole window (the cluster stalls: seats and KV
        held by long requests) is evidence too: at most one per backlogged span so far, as if
        one left now, so the estimate sinks the longer the stall lasts instead of vanishing."""
        busy = self._busy_s(now)
        if busy and not self._waited:
            return 1.0 / busy
        return len(self._waited) / busy if busy else None

    def token_rate(self, now: float) -> float | None:
        """Tokens (prompt + expected output) per second the cluster takes on while saturated:
        its capacity for the current mix. None without evidence."""
        busy = self._busy_s(now)
        return sum(tokens for _, tokens in self._waited) / busy if busy and self._waited else None

    def _busy_s(self, now: float) -> float:
        start = now - self.window_s
        while self._waited and self._waited[0][0] < start:
            self._waited.popleft()
        while self._spans and self._spans[0][1] < start:
            self._spans.popleft()
        busy = sum(end - max(begin, start) for begin, end in self._spans)
        if self._open_since is not None:
            busy += now - max(self._open_since, start)
        return busy if busy >= self.min_evidence_s else 0.0
