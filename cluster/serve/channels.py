"""Output channels: every request's outputs from one engine replica to one gateway replica over one
long-lived stream, a batch of outputs per Ray item, instead of a stream per request and an item
per output (`gateway.multiplex_outputs`).

Each request is still its own Serve call (`EngineServer.run`): admission, placement by the request
router, `max_ongoing_requests`, cancellation when the client leaves and the error of a replica that
dies all stay per request. Only the outputs change route: the replica appends them to its `Outbox`
for the calling gateway, and that gateway's `attach` stream to the replica takes whatever has
accumulated in one item. Under load the batches grow on their own (one per engine step when the
gateway keeps up, more when it lags), so the per-item cost that binds a busy gateway and engine
replica front end (Ray's streaming items, serialisation) is paid per batch.

Both ends are plain asyncio over injected calls, so unit tests wire them together without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cluster.contracts import EngineOutput, EngineUnavailable

# One channel item: (request id, output), None as the output when the request's run has ended
# (after its last output, or on an error or a cancellation).
Batch = list[tuple[str, EngineOutput | None]]
CALLER_CHECK_S = 5.0  # an engine replica asks whether a stream's caller lives this often
T = TypeVar("T")
_END: Any = object()


@dataclass(frozen=True)
class Channel:
    """The argument of an `attach` call: the request router pins it to `replica`. `caller`: the
    gateway replica's actor handle, which the engine replica pings (`while_caller_lives`)."""

    gateway: str
    replica: str
    caller: Any = field(default=None, compare=False)


async def while_caller_lives(
    items: AsyncIterator[T], alive: Callable[[], Awaitable[bool]], every_s: float = CALLER_CHECK_S
) -> AsyncIterator[T]:
    """`items` until they end, or until `alive()`, asked every `every_s`, says the caller is
    gone. Ray does not stop a stream whose caller died (idle or sending): it would stay an
    ongoing request on its replica, and a leaving replica waits for those to end, up to
    `engine.drain_timeout_s`."""
    watch = asyncio.ensure_future(_until_gone(alive, every_s))
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(items, _END))
            await asyncio.wait({pending, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():  # the caller is gone
                return
            item, pending = pending.result(), None
            if item is _END:
                return
            yield item
    finally:
        watch.cancel()
        if pending is not None:
            pending.cancel()


async def _until_gone(alive: Callable[[], Awaitable[bool]], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if not await alive():
            return


class Outbox:
    """One gateway's outputs on one engine replica, waiting for that gateway's channel."""

    def __init__(self) -> None:
        self._items: Batch = []
        self._ready = asyncio.Event()
        self.readers = 0
        self.runs: set[asyncio.Task] = set()

    def put(self, request_id: str, output: EngineOutput | None) -> None:
        self._items.append((request_id, output))
        self._ready.set()

    async def take(self) -> Batch:
        """Everything since the last take; waits while there is nothing."""
        await self._ready.wait()
        self._ready.clear()
        items, self._items = self._items, []
        return items


class Outboxes:
    """The engine replica's end: an outbox per gateway that runs requests here."""

    def __init__(self) -> None:
        self._by_gateway: dict[str, Outbox] = {}

    async def run(
        self, gateway: str, request_id: str, outputs: AsyncIterator[EngineOutput]
    ) -> None:
        outbox = self._by_gateway.setdefault(gateway, Outbox())
        task = asyncio.current_task()
        if task is not None:
            outbox.runs.add(task)
        try:
            async for output in outputs:
                outbox.put(request_id, output)
        finally:
            outbox.runs.discard(task)
            outbox.put(request_id, None)

    async def attach(self, gateway: str) -> AsyncIterator[Batch]:
        """The gateway's channel. When the last one closes (the gateway is done with this replica,
        or died and Ray stopped the stream), the gateway's requests still running here are
        cancelled, which aborts them in the engine: nobody would read their outputs."""
        outbox = self._by_gateway.setdefault(gateway, Outbox())
        outbox.readers += 1
        try:
            while True:
                yield await outbox.take()
        finally:
            outbox.readers -= 1
            if outbox.readers == 0 and self._by_gateway.get(gateway) is outbox:
                del self._by_gateway[gateway]
                for task in outbox.runs:
                    task.cancel()


_RETURNED = object()  # an inbox marker: the request's run call has returned


@dataclass
class _Inbox:
    expected: str | None  # the replica the scheduler chose (Serve's router tries it first)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    replica: str | None = None  # where it runs, once known (an output came, or the call returned)

    @property
    def likely(self) -> str | None:
        return self.replica or self.expected


class Channels:
    """The gateway replica's end: a reader per engine replica in the router's replica set, and an
    inbox per request that the readers fill.

    `attach(replica)` opens a channel to one replica (an async iterator of batches). A reader
    stays open while its replica is in the set, and after it leaves the set (draining) for as
    long as a request may still have outputs there, so a draining replica's ongoing requests drop
    to zero and Serve can stop it. Requests still there `drain_grace_s` after it left are told
    they may move (`EngineOutput.draining`)."""

    def __init__(
        self, attach: Callable[[str], AsyncIterator[Batch]], drain_grace_s: float | None = None
    ) -> None:
        self._attach = attach
        self._grace_s = drain_grace_s
        self._leaving: dict[str, asyncio.TimerHandle] = {}  # replica -> its grace's end
        self._inboxes: dict[str, _Inbox] = {}
        self._readers: dict[str, asyncio.Task] = {}
        self._replicas: frozenset[str] = frozenset()
        self._applied: frozenset[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def replicas(self, replicas: Iterable[str]) -> None:
        """The router's replica set, from any thread. Applied on the loop at once: a gateway
        replica's first requests go out before its router knows the set (Serve's router starts
        with the first call), and their outputs need the channels this opens."""
        self._replicas = frozenset(replicas)
        if (loop := self._loop) is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._sync)

    def _sync(self) -> None:
        if self._applied is self._replicas:
            return
        self._applied = replicas = self._replicas
        for replica in replicas - self._readers.keys():
            self._readers[replica] = asyncio.create_task(self._read(replica))
        for replica in replicas & self._leaving.keys():  # back in the set
            self._leaving.pop(replica).cancel()
        if self._grace_s is not None:
            loop = asyncio.get_running_loop()
            for replica in self._readers.keys() - replicas - self._leaving.keys():
                self._leaving[replica] = loop.call_later(self._grace_s, self._drain, replica)
        self._close_idle()

    def _drain(self, replica: str) -> None:
        """The replica left the set a grace period ago: each request still running there hears
        it may move (an output with no tokens, `draining`)."""
        self._leaving.pop(replica, None)
        for inbox in self._inboxes.values():
            if inbox.likely == replica:
                inbox.queue.put_nowait(EngineOutput([], draining=True))

    def _close_idle(self) -> None:
        leaving = self._readers.keys() - self._replicas
        if not leaving:
            return
        # A request not heard from yet is where the scheduler chose, or anywhere without a choice.
        # (Serve's router sends one elsewhere only if the choice refused it; one refused by a
        # replica that then left, and taken by another leaving one, fails with the error of a
        # cancelled run when the channel closes: visible, never silent.)
        busy = {inbox.likely for inbox in self._inboxes.values()}
        if None in busy:
            return
        for replica in leaving - busy:
            self._readers.pop(replica).cancel()

    async def close(self) -> None:
        """Close every channel (the gateway is shutting down)."""
        for timer in self._leaving.values():
            timer.cancel()
        self._leaving.clear()
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, replica: str) -> None:
        task = asyncio.current_task()
        error: BaseException = EngineUnavailable("channel closed")
        try:
            async for batch in self._attach(replica):
                for request_id, output in batch:
                    if (inbox := self._inboxes.get(request_id)) is not None:
                        inbox.replica = replica
                        inbox.queue.put_nowait(output)
        except EngineUnavailable as err:
            error = err
        finally:
            if self._readers.get(replica) is task:
                del self._readers[replica]
                self._applied = None  # reopen at the next sync if the replica is still there
            for inbox in self._inboxes.values():
                if inbox.replica == replica:
                    inbox.queue.put_nowait(error)

    async def stream(
        self,
        request_id: str,
        call: Awaitable[str],
        cancel: Callable[[], None],
        expected: str | None = None,
    ) -> AsyncIterator[EngineOutput]:
        """Outputs of the request that `call` runs (it returns the replica it ran on; `expected`:
        the replica it was sent to try first). Closing this early `cancel`s the call, which aborts
        the request in the engine."""
        self._loop = asyncio.get_running_loop()
        self._sync()
        inbox = self._inboxes[request_id] = _Inbox(expected)
        done = asyncio.ensure_future(call)
        done.add_done_callback(lambda _: inbox.queue.put_nowait(_RETURNED))
        ended = False  # the channel brought the run's end
        try:
            while True:
                item = await inbox.queue.get()
                if isinstance(item, EngineOutput):
                    yield item
                    if item.finish_reason is not None:
                        return
                elif isinstance(item, BaseException):
                    raise item
                elif item is None:
                    ended = True
                    if done.done():
                        done.result()  # the run's error, if any
                        return
                else:  # _RETURNED
                    replica = done.result()  # raises the run's error
                    if ended:
                        return
                    inbox.replica = replica
                    if replica not in self._readers:  # its outputs have no way here any more
                        raise EngineUnavailable("channel closed")
        finally:
            del self._inboxes[request_id]
            if not done.done():
                cancel()
                done.cancel()
            self._close_idle()
