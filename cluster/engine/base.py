"""The engine interface the gateway talks to, whatever runs behind it (mock or vLLM).

Input is harmony token ids rendered by the gateway; output is token ids the gateway parses, so
every engine shares one rendering and parsing path. The values are `cluster.contracts`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from cluster.contracts import CacheDelta, EngineOutput, EngineRequest, LoadReport


class Engine(abc.ABC):
    """An inference engine replica: streams token ids, aborts on cancellation, reports load."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs; closing the iterator early aborts the request and frees its capacity."""

    @abc.abstractmethod
    def load_report(self) -> LoadReport: ...

    def cached_prompt_tokens(self, prompt_token_ids: list[int]) -> int:
        """Prompt tokens its prefix cache would serve now; 0 where the engine cannot tell."""
        return 0

    def cache_events(self) -> AsyncIterator[CacheDelta] | None:
        """What the engine's prefix cache holds, then what changes, for one gateway; None where
        the engine does not say (the gateway's index then follows its placements alone)."""
        return None

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
