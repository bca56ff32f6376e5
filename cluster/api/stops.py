"""Client stop strings, found in streamed text."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds client stop strings in streamed text, holding back only what could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to emit now; after a stop string is seen, nothing more."""
        if not self._stops:
            return text
        if self.stopped:
            return ""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out
        cut = max(len(self._pending) - self._hold, 0)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
