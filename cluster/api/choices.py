"""A request's `n` choices (chat, completions): each its own engine request (id, seed), all
admitted or none, their streams merged as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace

from cluster.api.engine_client import EngineClient
from cluster.api.generation import Generation
from cluster.contracts import EngineRequest


def nth_choice(request: EngineRequest, index: int) -> EngineRequest:
    """Choice `index` of a request: its own engine request id and, with a seed, its own seed."""
    if index == 0:
        return request
    seed = request.sampling.seed
    return replace(
        request,
        request_id=f"{request.request_id}-{index}",
        sampling=replace(request.sampling, seed=None if seed is None else seed + index),
    )


async def start_all(runs: Sequence[Generation], engine: EngineClient) -> None:
    """Admit every choice (each a request for the scheduler); one refused, none runs."""
    started = await asyncio.gather(*(r.start(engine) for r in runs), return_exceptions=True)
    failed = [e for e in started if isinstance(e, BaseException)]
    if failed:
        await asyncio.gather(*(r.close() for r in runs))
        raise failed[0]


async def close_all(runs: Sequence[Generation]) -> None:
    """Abort what is left of every choice (a stream's `close`)."""
    await asyncio.gather(*(r.close() for r in runs))


async def merge(streams: Sequence[AsyncIterator[str]]) -> AsyncIterator[str]:
    """The items of several streams as they come; the first error ends it."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[str | None, BaseException | None]] = asyncio.Queue()

    async def pump(stream: AsyncIterator[str]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((item, None))
            await queue.put((None, None))
        except Exception as err:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((None, err))

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        left = len(tasks)
        while left:
            item, err = await queue.get()
            if err is not None:
                raise err
            if item is None:
                left -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
