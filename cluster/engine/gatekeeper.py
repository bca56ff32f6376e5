"""An engine that takes a request only with room to run it now (`router.engine_refuses`).

Several gateways place on the same engines, each on load reports up to a period old and blind to
what the others placed since: between two reports they can fill the same free seat. An engine
that takes whatever comes leaves that overflow in vLLM's first-come queue, where the order the
schedulers chose no longer applies. This one judges each request by the scheduler's own headroom
rule on its exact state and, without room, answers at once with a refusal that carries its load:
the gateway queues the request again in its place. Its last output carries the load too, so the
gateway that placed the request sees the seat free as it frees, not a period later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from cluster.config import RouterConfig
from cluster.contracts import CacheDelta, EngineOutput, EngineRequest, LoadReport
from cluster.engine.base import Engine
from cluster.scheduling.scheduler import has_headroom


class Gatekeeper(Engine):
    def __init__(self, engine: Engine, router: RouterConfig) -> None:
        self._engine, self._router = engine, router
        self._ongoing = 0  # taken and not finished: an engine's own stats may lag a step
        self.refused = 0

    def load_report(self) -> LoadReport:
        report = self._engine.load_report()
        unseen = self._ongoing - report.running - report.waiting
        return replace(report, waiting=report.waiting + unseen) if unseen > 0 else report

    def has_room(self, request: EngineRequest) -> bool:
        prompt = len(request.prompt_token_ids)
        prefill = prompt - self._engine.cached_prompt_tokens(request.prompt_token_ids)
        report = self.load_report()
        return has_headroom(report, 0, 0, prompt, self._router, prefill=prefill, engine_side=True)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if not self.has_room(request):
            self.refused += 1
            yield EngineOutput([], refused=True, report=self.load_report())
            return
        self._ongoing += 1
        held = True
        try:
            async with aclosing(self._engine.generate(request)) as outputs:
                async for output in outputs:
                    if output.finish_reason is not None and held:
                        self._ongoing -= 1  # its seat is free as this goes out
                        held = False
                        output = replace(output, report=self.load_report())
                    yield output
        finally:
            if held:
                self._ongoing -= 1

    def cached_prompt_tokens(self, prompt_token_ids: list[int]) -> int:
        return self._engine.cached_prompt_tokens(prompt_token_ids)

    def cache_events(self) -> AsyncIterator[CacheDelta] | None:
        return self._engine.cache_events()

    async def shutdown(self) -> None:
        await self._engine.shutdown()
