"""A sum over a sliding time window: offered tokens per second (autoscaling demand), admissions
per second (admission's foresight). Pure: every call takes `now`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingSum:
    """Amounts over the last `window_s` seconds (offered tokens per second, for autoscaling)."""

    window_s: float
    _items: deque[tuple[float, float]] = field(default_factory=deque)
    _total: float = 0.0

    def add(self, now: float, amount: float) -> None:
        self._items.append((now, amount))
        self._total += amount

    def rate(self, now: float) -> float:
        while self._items and self._items[0][0] < now - self.window_s:
            self._total -= self._items.popleft()[1]
        return max(self._total, 0.0) / self.window_s
